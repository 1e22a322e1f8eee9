"""Metering's view of the catalog's prices: every endpoint's price history, kept fresh by
``WatchCatalog`` (with ``include_price_history``), called as the metering service.

:class:`PriceBook` is one snapshot's history, immutable: for each endpoint the prices it has
had, oldest first, each in effect from its ``effective_time`` until the next one's (the
catalog's table ``endpoint_prices``; see ``catalog.proto`` ``EndpointPriceHistory``). Each
price is a full :class:`~switchboard_core.pricing.PriceSheet` (rates by token type and
modality, tiers, windows, fees) with the catalog's ``price_version`` for it, the id a usage
event names when the router knew which price it billed with. Versions are the catalog's ids
of ``endpoint_prices`` rows: unique across endpoints, so the book also knows which endpoint
a version belongs to. A catalog that sends no versions (0) leaves events to be priced by
time alone.
:class:`PriceWatch` is the background task (:class:`switchboard_core.catalog_watch.CatalogWatch`)
that swaps in a new book on every catalog change and tells the cost check
(:mod:`switchboard_metering.cost_check`) how current it is: it asks for the current snapshot
on every (re)connect, so while it is :attr:`~PriceWatch.streaming` it holds every change up to
the catalog's propagation delay.

A catalog that sends no price history (older than this metering) gives no book: costs then go
unverified, as before metering had a view at all.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from switchboard.catalog.v1 import catalog_pb2
from switchboard_core.catalog_watch import CatalogWatch
from switchboard_core.pricing import PriceSheet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndpointPrices:
    """One endpoint's prices, oldest first: ``sheets[i]`` took effect at ``starts[i]``
    (nanoseconds since the epoch) and held until ``starts[i + 1]``; ``versions[i]`` is its
    catalog price version (0 when the catalog gave none)."""

    starts: tuple[int, ...]
    sheets: tuple[PriceSheet, ...]
    versions: tuple[int, ...] = ()
    by_version: Mapping[int, int] = field(default_factory=dict)  # version -> index

    def during(self, first_ns: int, last_ns: int) -> range:
        """Indexes of the prices in effect at some instant of ``[first_ns, last_ns]``: the
        one in effect at ``first_ns`` (if the endpoint had one) and every later one that
        took effect by ``last_ns``."""
        end = bisect.bisect_right(self.starts, last_ns)
        begin = max(bisect.bisect_right(self.starts, first_ns) - 1, 0)
        return range(begin, end)

    def at(self, instant_ns: int) -> int | None:
        """The index of the price in effect at ``instant_ns``; None before the first."""
        index = bisect.bisect_right(self.starts, instant_ns) - 1
        return index if index >= 0 else None

    def effective_at(self, index: int) -> datetime:
        return datetime.fromtimestamp(self.starts[index] / 1e9, UTC)

    def version_of(self, index: int) -> int:
        return self.versions[index] if self.versions else 0


def _endpoint_prices(history: catalog_pb2.EndpointPriceHistory) -> EndpointPrices:
    changes = sorted(history.changes, key=lambda c: c.effective_time.ToNanoseconds())
    sheets = []
    for change in changes:
        try:
            sheets.append(PriceSheet.from_proto(change.pricing))
        except ValueError as error:
            raise ValueError(f"endpoint {history.endpoint_id!r}: {error}") from None
    versions = tuple(c.price_version for c in changes)
    return EndpointPrices(
        starts=tuple(c.effective_time.ToNanoseconds() for c in changes),
        sheets=tuple(sheets),
        versions=versions,
        by_version={v: i for i, v in enumerate(versions) if v},
    )


@dataclass(frozen=True, slots=True)
class PriceBook:
    """Every endpoint's price history, as of one catalog version, and the endpoint each
    price version belongs to."""

    version: int
    endpoints: Mapping[str, EndpointPrices]
    version_owners: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, message: catalog_pb2.WatchCatalogResponse) -> PriceBook | None:
        """The book of a snapshot; None when it carries no price history although it has
        endpoints (a catalog that does not send any). Raises ``ValueError`` (a malformed
        price) for a snapshot that cannot be used."""
        has_endpoints = any(model.endpoints for model in message.models)
        if has_endpoints and not message.price_history:
            return None
        endpoints = {h.endpoint_id: _endpoint_prices(h) for h in message.price_history}
        return cls(
            version=message.version,
            endpoints=endpoints,
            version_owners={
                version: endpoint_id
                for endpoint_id, prices in endpoints.items()
                for version in prices.by_version
            },
        )


class PriceWatch(CatalogWatch):
    """The current :class:`PriceBook` (None until the catalog has sent one), kept fresh."""

    name = "catalog-price-watch"
    include_price_history = True

    def __init__(
        self, channel: grpc.aio.Channel, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(channel, clock=clock)
        self.book: PriceBook | None = None
        self._next = asyncio.Event()  # set (and replaced) when a book is swapped in

    def apply(self, message: catalog_pb2.WatchCatalogResponse) -> None:
        try:
            book = PriceBook.from_proto(message)
        except ValueError as error:  # keep the book in hand; the catalog validates prices
            log.error(
                "catalog price history rejected",
                extra={"catalog_version": message.version, "error": str(error)},
            )
            return
        if book is None:
            log.warning(
                "the catalog sends no price history (is it older than metering?);"
                " usage costs go unverified",
                extra={"catalog_version": message.version},
            )
        self.book = book
        self._mark_loaded()
        woken, self._next = self._next, asyncio.Event()
        woken.set()
        log.info(
            "catalog prices loaded",
            extra={
                "catalog_version": message.version,
                "endpoints": len(book.endpoints) if book is not None else 0,
            },
        )

    async def changed(self, timeout: float) -> None:
        """Wait until the next book is swapped in, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._next.wait(), timeout)
