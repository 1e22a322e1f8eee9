"""Price every ledger row again and report the rows whose cost is not their price.

The ledger keeps what each generation was charged, its full usage and the catalog's
``price_version`` that billed it (migration 0006). :func:`reprice` recomputes each row's cost
from a :class:`~switchboard_metering.prices.PriceBook` (the catalog's price history, as
metering watches it) with the same arithmetic as the router and the ingest check
(:class:`switchboard_core.pricing.PriceSheet`, at the row's ``created_at``):

- a row naming a version its endpoint's history has is priced with that version's sheet;
- a row with version 0 (written before routers sent one, or by a catalog without versions) is
  priced with the price in force at ``created_at``. Such a row may differ honestly for up to
  the cost check's lag after a price change (the router's catalog snapshot lagged; the ingest
  check accepted any price of that window): the report names the price it used, so such a
  difference reads as "charged the previous price";
- a row whose endpoint or version the book does not have (history older than the catalog
  sends, an endpoint since deleted) cannot be priced: it is counted, not compared.

Nothing is changed: the ledger is the record of what clients were charged, and budgets and
invoices were settled on it. The report is for people (``python -m switchboard_metering
reconcile``, ``make reconcile``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts
from switchboard_metering.cost_check import price_label
from switchboard_metering.event_rules import COUNT_FIELDS
from switchboard_metering.prices import EndpointPrices, PriceBook

# Rows read per round trip, and at most this many differences listed (all are counted).
FETCH_ROWS = 5000
MAX_LISTED = 1000

_SELECT = f"""
SELECT generation_id, attempt, endpoint_id, created_at, price_version, cost,
       {", ".join(COUNT_FIELDS)}
FROM generations
WHERE created_at >= (SELECT retained_from FROM ledger_retention)
  AND ($1::timestamptz IS NULL OR created_at >= $1)
ORDER BY created_at, generation_id, attempt
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class CostDifference:
    generation_id: str
    attempt: int
    created_at: datetime
    endpoint_id: str
    ledger: Decimal
    repriced: Decimal
    price: str  # which price: "price version 12 of 2026-06-01T12:00:00Z"

    def __str__(self) -> str:
        return (
            f"{self.generation_id} attempt {self.attempt} {self.created_at:%Y-%m-%dT%H:%M:%SZ}"
            f" {self.endpoint_id}: ledger {format_usd(self.ledger)} != {format_usd(self.repriced)}"
            f" ({self.price})"
        )


@dataclass(slots=True)
class Repricing:
    """What :func:`reprice` found: rows compared, rows it could not price, the
    differences (at most :data:`MAX_LISTED` listed, all counted)."""

    checked: int = 0
    unpriced: int = 0
    different: int = 0
    differences: list[CostDifference] = field(default_factory=list)


def price_index(prices: EndpointPrices, version: int, created_ns: int) -> int | None:
    """The index of the price that billed a row: its version's when it names one the
    endpoint's history has (None when the history has versions but not that one), else the
    one in force at ``created_ns``."""
    if version and prices.by_version:
        return prices.by_version.get(version)
    return prices.at(created_ns)


def repriced(book: PriceBook, row: asyncpg.Record) -> tuple[Decimal, str] | None:
    """The row's cost under ``book`` and the price named, or None if it cannot be priced."""
    prices = book.endpoints.get(row["endpoint_id"])
    if prices is None:
        return None
    created: datetime = row["created_at"]
    created_ns = (created - _EPOCH) // _MICROSECOND * 1000
    index = price_index(prices, row["price_version"], created_ns)
    if index is None:
        return None
    counts = Counts(**{name: row[name] for name in COUNT_FIELDS})
    return prices.sheets[index].cost(counts, at=created), price_label(prices, index)


async def reprice(
    pool: asyncpg.Pool, book: PriceBook, *, since: datetime | None = None
) -> Repricing:
    """Every retained ledger row (from ``since``, when given) priced again under ``book``."""
    found = Repricing()
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(_SELECT, since)
        while rows := await cursor.fetch(FETCH_ROWS):
            for row in rows:
                again = repriced(book, row)
                if again is None:
                    found.unpriced += 1
                    continue
                found.checked += 1
                cost, price = again
                if cost == row["cost"]:
                    continue
                found.different += 1
                if len(found.differences) < MAX_LISTED:
                    found.differences.append(
                        CostDifference(
                            row["generation_id"],
                            row["attempt"],
                            row["created_at"],
                            row["endpoint_id"],
                            row["cost"],
                            cost,
                            price,
                        )
                    )
    return found
