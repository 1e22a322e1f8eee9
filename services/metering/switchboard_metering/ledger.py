"""The usage ledger: one row per generation attempt, and hourly rollups updated with it.

:meth:`Ledger.record` writes a batch of ``UsageEvent`` in one statement (so one transaction
and one round trip): new generations are inserted, replayed ones are skipped, and only the
new rows are added to ``usage_rollups``. Replaying any event any number of times, in any
order or batch, leaves the ledger and the rollups as if it had been recorded once; but a swept
row is provisional, replaced once by its router's own event (:mod:`.ledger_corrections`).

A row is keyed by ``(generation_id, attempt, created_at)``: ``generations`` is partitioned by
month of ``created_at`` (:mod:`switchboard_metering.partitions`), and Postgres keys a
partitioned table by its partition column too. Events must therefore carry ``create_time``,
which the router fixes once per generation, so that a replay lands on the same key. Events
dated before the retention horizon are ignored (counted as expired).

A row keeps every count of the event's ``Usage`` (the finer parts too: one-hour cache
writes, input by modality, cached audio, audio output, web searches, input images) and the
``price_version`` that billed it (0: not known, the price in force at ``created_at``), so that
:mod:`switchboard_metering.reconcile` can price any past row again (migration 0006).

Nothing reaches Postgres unchecked: :mod:`switchboard_metering.event_rules` bounds every
field first (token counts, cost, attempt, durations, text, enums, and ``create_time`` inside
the accepted window), so a forged or garbled event is refused by name instead of failing the
batch, overflowing the rollups or creating partitions for far-off months; with a cost check
(:mod:`switchboard_metering.cost_check`), a cost that is not its endpoint's price is too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core import tracing
from switchboard_core.errors import InvalidArgument, NotFound, Unavailable
from switchboard_core.money import ZERO, format_usd, parse_usd
from switchboard_core.usage_bounds import text_problem
from switchboard_metering.event_rules import (
    COUNT_FIELDS,
    MAX_REPORTED_VIOLATIONS,
    TOKEN_FIELDS,
    CostCheck,
    EventRules,
    Problem,
    check_event,
    validate_events,
)
from switchboard_metering.ledger_corrections import correct, correction_sql
from switchboard_metering.partitions import Partitions

log = logging.getLogger(__name__)

EVENTS_INGESTED = Counter(
    "switchboard_usage_events_ingested_total",
    "Usage events newly written to the ledger, by source (outbox or rpc).",
    ["source"],
)
EVENTS_EXPIRED = Counter(
    "switchboard_usage_events_expired_total",
    "Usage events ignored because they are dated before the ledger's retention horizon.",
    ["source"],
)
EVENTS_DUPLICATE = Counter(
    "switchboard_usage_events_duplicate_total",
    "Usage events skipped because their generation was already in the ledger.",
    ["source"],
)
for _source in ("outbox", "rpc"):  # export zeros before the first event
    EVENTS_INGESTED.labels(_source)
    EVENTS_DUPLICATE.labels(_source)
    EVENTS_EXPIRED.labels(_source)

__all__ = [  # validation lives in event_rules; these names stay importable from here
    "COUNT_FIELDS",
    "MAX_REPORTED_VIOLATIONS",
    "TOKEN_FIELDS",
    "Batch",
    "Ledger",
    "WriteResult",
    "check_event",
    "validate_events",
]
# The columns of ``generations`` written from an event, and their Postgres array types.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("generation_id", "text"),
    ("attempt", "integer"),
    ("key_id", "text"),
    ("account_id", "text"),
    ("model_id", "text"),
    ("provider_id", "text"),
    ("endpoint_id", "text"),
    ("upstream_model", "text"),
    *((name, "bigint") for name in COUNT_FIELDS),
    ("estimated", "boolean"),
    ("cost", "numeric"),
    ("finish_reason", "smallint"),
    ("native_finish_reason", "text"),
    ("status", "smallint"),
    ("streamed", "boolean"),
    ("created_at", "timestamptz"),
    ("latency_ms", "bigint"),
    ("ttft_ms", "bigint"),
    ("price_version", "bigint"),
    ("swept", "boolean"),
)
_NAMES = ", ".join(name for name, _ in _COLUMNS)
_CREATED_AT = [name for name, _ in _COLUMNS].index("created_at")
_ARRAYS = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_COLUMNS, start=1))
# Rollup count columns are bigint (at most 9.22e18). Every event is at most
# MAX_PROMPT_TOKENS (2e7) a count (switchboard_core.usage_bounds), so one (key, model,
# provider, hour) cell overflows only after 4.6e11 events in that hour, 1.28e8 a second: the
# per-event bound is the guarantee. Should Postgres refuse a row anyway, the outbox writes its
# batch event by event and dead-letters only the refused one.
_SUMS = ", ".join(f"sum({name})" for name in (*COUNT_FIELDS, "cost"))
_ADD = ", ".join(
    f"{name} = usage_rollups.{name} + EXCLUDED.{name}"
    for name in ("requests", *COUNT_FIELDS, "cost")
)
_COUNTS = ", ".join(COUNT_FIELDS)

# How many times RecordUsage checks an unsettled event again (each after the cost check's
# wait) before answering UNAVAILABLE: the check settles it within one wait unless its view
# keeps changing.
_MAX_SETTLE_ROUNDS = 5

_KEY = "generation_id, attempt, created_at"
# Duplicates inside the batch are dropped first (the first occurrence wins, but a router's
# own event over a swept one), and events dated before the retention horizon are set aside;
# rows are inserted in key order so that concurrent writers take locks in the same order.
# ``skipped``: events not swept and not inserted (duplicates, or corrections of swept rows).
_RECORD_SQL = f"""
WITH input AS (
    SELECT DISTINCT ON ({_KEY}) {_NAMES}
    FROM unnest({_ARRAYS}) WITH ORDINALITY AS e({_NAMES}, ord)
    ORDER BY {_KEY}, swept, ord
),
horizon AS (SELECT retained_from FROM ledger_retention),
inserted AS (
    INSERT INTO generations ({_NAMES})
    SELECT {_NAMES} FROM input WHERE created_at >= (SELECT retained_from FROM horizon)
    ORDER BY {_KEY}
    ON CONFLICT ({_KEY}) DO NOTHING
    RETURNING key_id, model_id, provider_id, created_at, {_COUNTS}, cost, swept
),
rolled AS (
    INSERT INTO usage_rollups
        (key_id, model_id, provider_id, bucket_start, requests, {_COUNTS}, cost)
    SELECT key_id, model_id, provider_id, date_trunc('hour', created_at, 'UTC'), count(*), {_SUMS}
    FROM inserted
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (key_id, model_id, provider_id, bucket_start) DO UPDATE SET {_ADD}
)
SELECT (SELECT count(*) FROM inserted) AS recorded,
       (SELECT count(*) FROM input WHERE created_at < (SELECT retained_from FROM horizon))
           AS expired,
       (SELECT count(*) FROM input
        WHERE NOT swept AND created_at >= (SELECT retained_from FROM horizon))
       - (SELECT count(*) FROM inserted WHERE NOT swept) AS skipped
"""
_CORRECT_SQL = correction_sql(_COLUMNS)

_QUERY_SQL = f"""
SELECT date_trunc($4, bucket_start, 'UTC') AS bucket_start, model_id, provider_id,
       sum(requests)::bigint AS requests,
       {", ".join(f"sum({name})::bigint AS {name}" for name in COUNT_FIELDS)},
       sum(cost) AS cost
FROM usage_rollups
WHERE {{owner}} AND bucket_start >= $2 AND bucket_start < $3
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""
_QUERY_KEY_SQL = _QUERY_SQL.format(owner="key_id = $1")
_QUERY_ACCOUNT_SQL = _QUERY_SQL.format(
    owner="key_id IN (SELECT id FROM api_keys WHERE account_id = $1)"
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    recorded: int
    duplicates: int
    expired: int = 0  # dated before the retention horizon: ignored
    corrected: int = 0  # replaced a swept row (ledger_corrections)


@dataclass(frozen=True, slots=True)
class Batch:
    """Events ready for :meth:`Ledger.write`: one array per column, their months, and the
    instant they were checked at (partitions are ensured for the same window)."""

    size: int
    columns: list[list[Any]]
    months: set[datetime]
    checked_at: datetime | None = None
    # The sampled traces its events belong to (UsageEvent.trace_parent; none untraced): the
    # write is a span in each (switchboard_core.tracing.child_spans).
    trace_parents: tuple[str, ...] = ()


def _row(event: metering_pb2.UsageEvent) -> tuple[Any, ...]:
    usage = event.usage
    return (
        event.generation_id,
        event.attempt,
        event.key_id,
        event.account_id,
        event.model_id,
        event.provider_id,
        event.endpoint_id,
        event.upstream_model,
        *(getattr(usage, name) for name in COUNT_FIELDS),
        usage.estimated,
        parse_usd(event.cost_usd),
        int(event.finish_reason),
        event.native_finish_reason,
        int(event.status),
        event.streamed,
        event.create_time.ToDatetime(tzinfo=UTC),
        event.latency_ms,
        event.time_to_first_token_ms,
        event.price_version,
        event.swept,
    )


def _event_from_row(row: asyncpg.Record) -> metering_pb2.UsageEvent:
    event = metering_pb2.UsageEvent(
        generation_id=row["generation_id"],
        attempt=row["attempt"],
        key_id=row["key_id"],
        account_id=row["account_id"],
        model_id=row["model_id"],
        provider_id=row["provider_id"],
        endpoint_id=row["endpoint_id"],
        upstream_model=row["upstream_model"],
        usage=common_pb2.Usage(
            estimated=row["estimated"], **{name: row[name] for name in COUNT_FIELDS}
        ),
        cost_usd=format_usd(row["cost"]),
        finish_reason=row["finish_reason"],
        native_finish_reason=row["native_finish_reason"],
        status=row["status"],
        latency_ms=row["latency_ms"],
        time_to_first_token_ms=row["ttft_ms"],
        streamed=row["streamed"],
        price_version=row["price_version"],
        swept=row["swept"],
    )
    event.create_time.FromDatetime(row["created_at"])
    return event


# The rollups sum every count; a UsageRow carries those its message has fields for (the five
# classic token counts so far: the finer parts follow once the proto has them).
_ROW_COUNTS = tuple(
    name for name in COUNT_FIELDS if name in metering_pb2.UsageRow.DESCRIPTOR.fields_by_name
)


def _usage_row(row: asyncpg.Record) -> metering_pb2.UsageRow:
    out = metering_pb2.UsageRow(
        model_id=row["model_id"],
        provider_id=row["provider_id"],
        requests=row["requests"],
        cost_usd=format_usd(row["cost"]),
        **{name: row[name] for name in _ROW_COUNTS},
    )
    out.bucket_start.FromDatetime(row["bucket_start"])
    return out


class Ledger:
    """Generations and usage rollups in Postgres."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        partitions: Partitions | None = None,
        *,
        cost_check: CostCheck | None = None,
    ) -> None:
        self._pool = pool
        self.partitions = partitions or Partitions(pool)
        # One window for validation and partitions: nothing outside it is written or created.
        self.rules = EventRules(self.partitions.window, cost_check)

    async def record(
        self,
        events: Sequence[metering_pb2.UsageEvent],
        *,
        source: str,
        checked: bool = False,
        checked_at: datetime | None = None,
    ) -> WriteResult:
        """Write a batch exactly once per (generation, attempt); ``source`` labels metrics.

        Raises ``InvalidArgument`` (naming ``events[i].<field>``) before writing anything
        when an event is invalid; ``checked`` says the caller already ran :func:`check_event`
        with :attr:`rules` on every event (the outbox does, to dead-letter bad entries one by
        one), at ``checked_at`` when given.

        An event whose cost the cost check cannot settle yet (a price change on its way to
        metering) is waited for, at most the check's settle time; ``Unavailable`` (retry)
        if it is still unsettled then.
        """
        now = self.rules.window.clock() if checked_at is None else checked_at
        if not checked:
            await self._validate(events, now)
        batch = self.prepare(events, checked=True, checked_at=now)
        return await self.write(batch, source=source)

    async def _validate(self, events: Sequence[metering_pb2.UsageEvent], now: datetime) -> None:
        check = self.rules.cost_check
        if check is None:
            validate_events(events, rules=self.rules, now=now)
            return
        arrival = time.time()
        for _ in range(_MAX_SETTLE_ROUNDS):
            unsettled: list[Problem] = []
            validate_events(events, rules=self.rules, now=now, arrival=arrival, unsettled=unsettled)
            if not unsettled:
                return
            await check.wait_settled(arrival)
        raise Unavailable(
            "the cost of a usage event cannot be checked yet (a price change is on its way"
            " to metering); retry",
            reason="USAGE_COST_UNSETTLED",
            retry_after_seconds=1.0,
        )

    def prepare(
        self,
        events: Sequence[metering_pb2.UsageEvent],
        *,
        checked: bool = False,
        checked_at: datetime | None = None,
    ) -> Batch:
        """The Python half of :meth:`record` (validation and the statement's arrays), so that
        a caller can prepare one batch while the previous one is being written."""
        now = self.rules.window.clock() if checked_at is None else checked_at
        if not checked:
            validate_events(events, rules=self.rules, now=now)
        rows = [_row(e) for e in events]
        columns = [list(column) for column in zip(*rows, strict=True)]
        traces = tracing.sampled_parents(e.trace_parent for e in events) if tracing.active() else ()
        return Batch(len(events), columns, {row[_CREATED_AT] for row in rows}, now, traces)

    async def write(self, batch: Batch, *, source: str) -> WriteResult:
        """The database half of :meth:`record`; a CONSUMER span in each sampled trace of the
        batch's events when tracing is on."""
        if not batch.trace_parents:
            return await self._write(batch, source=source)
        attributes = {
            "db.system.name": "postgresql",
            "db.operation.name": "INSERT",
            "switchboard.ledger.source": source,
            "switchboard.ledger.batch_size": batch.size,
        }
        with tracing.child_spans(
            "ledger write", batch.trace_parents, SpanKind.CONSUMER, attributes
        ) as spans:
            result = await self._write(batch, source=source)
            for span in spans:
                span.set_attribute("switchboard.ledger.recorded", result.recorded)
            return result

    async def _write(self, batch: Batch, *, source: str) -> WriteResult:
        if not batch.size:
            return WriteResult(recorded=0, duplicates=0)
        columns, months = batch.columns, batch.months
        await self.partitions.ensure(months, now=batch.checked_at)
        try:
            written = await self._pool.fetchrow(_RECORD_SQL, *columns)
        except asyncpg.CheckViolationError as error:
            if "no partition" not in str(error):
                raise
            # Another process dropped or never created a partition we believed in.
            self.partitions.forget()
            await self.partitions.ensure(months, now=batch.checked_at)
            written = await self._pool.fetchrow(_RECORD_SQL, *columns)
        assert written is not None
        recorded, expired = int(written["recorded"]), int(written["expired"])
        corrected = 0
        if written["skipped"]:  # perhaps swept rows to replace (a second statement)
            corrected = await correct(self._pool, _CORRECT_SQL, columns, source)
        result = WriteResult(
            recorded=recorded,
            duplicates=batch.size - recorded - expired - corrected,
            expired=expired,
            corrected=corrected,
        )
        EVENTS_INGESTED.labels(source).inc(result.recorded)
        EVENTS_DUPLICATE.labels(source).inc(result.duplicates)
        if expired:
            EVENTS_EXPIRED.labels(source).inc(expired)
            log.warning(
                "usage events older than the ledger's retention ignored", extra={"count": expired}
            )
        return result

    async def get_generation(self, generation_id: str) -> metering_pb2.GetGenerationResponse:
        """The generation's ledger row (its last attempt, when several spent tokens)."""
        problem = text_problem(generation_id) if generation_id else "required"
        if problem is not None:  # a NUL would reach Postgres, which cannot store one
            raise InvalidArgument({"generation_id": problem})
        row = await self._pool.fetchrow(
            f"SELECT {_NAMES}, tokens_per_second FROM generations WHERE generation_id = $1"
            " ORDER BY attempt DESC LIMIT 1",
            generation_id,
        )
        if row is None:
            raise NotFound(f"generation {generation_id!r} not found")
        return metering_pb2.GetGenerationResponse(
            generation=_event_from_row(row), tokens_per_second=row["tokens_per_second"] or 0.0
        )

    async def query_usage(
        self,
        key_id: str,
        start: datetime,
        end: datetime,
        bucket: str,
        *,
        account_id: str = "",
    ) -> metering_pb2.QueryUsageResponse:
        """Rollups of one key (or of all the keys of ``account_id``, when given) in
        ``[start, end)`` by ``bucket`` ("hour" or "day"), model and provider. A row counts
        the hourly buckets that start inside the range."""
        name, owner = ("account_id", account_id) if account_id else ("key_id", key_id)
        problem = text_problem(owner)
        if problem is not None:
            raise InvalidArgument({name: problem})
        if account_id:
            rows = await self._pool.fetch(_QUERY_ACCOUNT_SQL, account_id, start, end, bucket)
        else:
            rows = await self._pool.fetch(_QUERY_KEY_SQL, key_id, start, end, bucket)
        response = metering_pb2.QueryUsageResponse(rows=[_usage_row(row) for row in rows])
        total_cost: Decimal = ZERO
        for row in rows:
            response.total_requests += row["requests"]
            response.total_prompt_tokens += row["prompt_tokens"]
            response.total_completion_tokens += row["completion_tokens"]
            total_cost += row["cost"]
        response.total_cost_usd = format_usd(total_cost)
        return response
