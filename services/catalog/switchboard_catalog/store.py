"""Catalog queries (asyncpg). Rows become protos in :mod:`switchboard_catalog.convert`.

Every write runs in one transaction that, when it changed anything, bumps the single-row
catalog version last and calls ``pg_notify('switchboard_catalog', <version>)``. The version
row's lock is held until commit, so versions commit in order and a snapshot read in one
REPEATABLE READ transaction always matches the version it reports.

Endpoint prices also have a history (``endpoint_prices``, appended by a trigger in the
transaction that changes any part of a price: migrations 0003 and 0004); an endpoint's
``price_version`` is the id of its newest history row, and each history entry carries its
own. The snapshot carries the part of it the
ledger may need (:data:`PRICE_HISTORY_MARGIN_DAYS`, :data:`MAX_PRICE_CHANGES`).

Prices announced for later (``Endpoint.scheduled_prices``) live in
``endpoint_scheduled_prices`` (migration 0006). An endpoint upsert REPLACES the endpoint's
schedule with the one it carries (so a read-modify-write keeps it; an empty list clears it),
and only writes when it differs (rewriting the same schedule is no change and bumps nothing).
A scheduled price the upsert carries that is already due (its time has come, by the
database's clock: a caller that read the schedule just before) is not stored but applied
by the upsert itself, as the endpoint's price, effective at its scheduled time.
:meth:`CatalogStore.apply_due_price` applies one due row (the scheduler's job): moved into
``endpoints`` in one transaction, its history row effective exactly at the scheduled time
(the ``switchboard.price_effective_at`` setting the history trigger reads), the row deleted
and the version bumped. Locks: an upsert locks the endpoint's schedule rows, then the
endpoint; the scheduler takes the oldest due row of an endpoint ``FOR UPDATE SKIP LOCKED``,
then the endpoint: the same order, so neither deadlocks, each row is applied once however
many replicas run the scheduler, and an endpoint's rows are applied oldest first.

An endpoint's ``capacity`` and ``data_policy`` and a model's ``hedge`` are plain columns
(migration 0008), written by every upsert like the rest of the entry; ``Endpoint.stats`` is
the routers' live measurement: no column holds it, so a write carrying it stores nothing of it
and is no change on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog import convert
from switchboard_core.auth import actor
from switchboard_core.errors import FailedPrecondition
from switchboard_core.usage_bounds import DEFAULT_MAX_EVENT_AGE_DAYS

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "switchboard_catalog"

_ENDPOINT_COLUMNS = """id, model_id, provider_id, upstream_model, prompt_price, completion_price,
    cached_prompt_price, cache_write_price, price_rules, context_length, max_completion_tokens,
    supported_parameters, quantization, status, deprecation_at, retirement_at, first_byte_ms,
    idle_ms, max_concurrent, requests_per_minute, retains_prompts, zero_data_retention"""
_MODEL_COLUMNS = """id, display_name, description, context_length, input_modalities,
    output_modalities, updated_at, deprecation_at, retirement_at, successor_model_id,
    first_byte_ms, idle_ms, hedge_mode, hedge_delay_ms, hedge_ttft_percentile"""
_SELECT_PROVIDERS = "SELECT id, display_name, api_format, base_url, dialect FROM providers"
# An endpoint's price version is its newest endpoint_prices row: the trigger appends one in
# the transaction of every price change, so the newest is the one in effect.
_SELECT_ENDPOINTS = f"""SELECT {_ENDPOINT_COLUMNS},
    (SELECT max(h.id) FROM endpoint_prices h WHERE h.endpoint_id = endpoints.id) AS price_version
    FROM endpoints"""

_SCHEDULED_COLUMNS = """endpoint_id, effective_at, prompt_price, completion_price,
    cached_prompt_price, cache_write_price, price_rules"""
_SELECT_SCHEDULED = f"SELECT {_SCHEDULED_COLUMNS} FROM endpoint_scheduled_prices"
_ORDER_SCHEDULED = "ORDER BY endpoint_id, effective_at"

# Each upsert returns a row only when it inserted or really changed something.
_UPSERT_PROVIDER = """
INSERT INTO providers AS p (id, display_name, api_format, base_url, dialect)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET
    display_name = EXCLUDED.display_name, api_format = EXCLUDED.api_format,
    base_url = EXCLUDED.base_url, dialect = EXCLUDED.dialect, updated_at = now()
WHERE (p.display_name, p.api_format, p.base_url, p.dialect) IS DISTINCT FROM
    (EXCLUDED.display_name, EXCLUDED.api_format, EXCLUDED.base_url, EXCLUDED.dialect)
RETURNING id"""

_UPSERT_MODEL = """
INSERT INTO models AS m
    (id, display_name, description, context_length, input_modalities, output_modalities,
     deprecation_at, retirement_at, successor_model_id, first_byte_ms, idle_ms, hedge_mode,
     hedge_delay_ms, hedge_ttft_percentile)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (id) DO UPDATE SET
    display_name = EXCLUDED.display_name, description = EXCLUDED.description,
    context_length = EXCLUDED.context_length, input_modalities = EXCLUDED.input_modalities,
    output_modalities = EXCLUDED.output_modalities, deprecation_at = EXCLUDED.deprecation_at,
    retirement_at = EXCLUDED.retirement_at, successor_model_id = EXCLUDED.successor_model_id,
    first_byte_ms = EXCLUDED.first_byte_ms, idle_ms = EXCLUDED.idle_ms,
    hedge_mode = EXCLUDED.hedge_mode, hedge_delay_ms = EXCLUDED.hedge_delay_ms,
    hedge_ttft_percentile = EXCLUDED.hedge_ttft_percentile, updated_at = now()
WHERE (m.display_name, m.description, m.context_length, m.input_modalities,
       m.output_modalities, m.deprecation_at, m.retirement_at, m.successor_model_id,
       m.first_byte_ms, m.idle_ms, m.hedge_mode, m.hedge_delay_ms, m.hedge_ttft_percentile)
    IS DISTINCT FROM (EXCLUDED.display_name, EXCLUDED.description, EXCLUDED.context_length,
       EXCLUDED.input_modalities, EXCLUDED.output_modalities, EXCLUDED.deprecation_at,
       EXCLUDED.retirement_at, EXCLUDED.successor_model_id, EXCLUDED.first_byte_ms,
       EXCLUDED.idle_ms, EXCLUDED.hedge_mode, EXCLUDED.hedge_delay_ms,
       EXCLUDED.hedge_ttft_percentile)
RETURNING id"""

_UPSERT_ENDPOINT = """
INSERT INTO endpoints AS e
    (id, model_id, provider_id, upstream_model, prompt_price, completion_price,
     cached_prompt_price, cache_write_price, price_rules, context_length,
     max_completion_tokens, supported_parameters, quantization, status, deprecation_at,
     retirement_at, first_byte_ms, idle_ms, max_concurrent, requests_per_minute, retains_prompts,
     zero_data_retention)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $22)
ON CONFLICT (id) DO UPDATE SET
    upstream_model = EXCLUDED.upstream_model, prompt_price = EXCLUDED.prompt_price,
    completion_price = EXCLUDED.completion_price,
    cached_prompt_price = EXCLUDED.cached_prompt_price,
    cache_write_price = EXCLUDED.cache_write_price, price_rules = EXCLUDED.price_rules,
    context_length = EXCLUDED.context_length,
    max_completion_tokens = EXCLUDED.max_completion_tokens,
    supported_parameters = EXCLUDED.supported_parameters,
    quantization = EXCLUDED.quantization, status = EXCLUDED.status,
    deprecation_at = EXCLUDED.deprecation_at, retirement_at = EXCLUDED.retirement_at,
    first_byte_ms = EXCLUDED.first_byte_ms, idle_ms = EXCLUDED.idle_ms,
    max_concurrent = EXCLUDED.max_concurrent, requests_per_minute = EXCLUDED.requests_per_minute,
    retains_prompts = EXCLUDED.retains_prompts,
    zero_data_retention = EXCLUDED.zero_data_retention, updated_at = now()
WHERE (e.upstream_model, e.prompt_price, e.completion_price, e.cached_prompt_price,
       e.cache_write_price, e.price_rules, e.context_length, e.max_completion_tokens,
       e.supported_parameters, e.quantization, e.status, e.deprecation_at, e.retirement_at,
       e.first_byte_ms, e.idle_ms, e.max_concurrent, e.requests_per_minute, e.retains_prompts,
       e.zero_data_retention)
    IS DISTINCT FROM (EXCLUDED.upstream_model, EXCLUDED.prompt_price,
       EXCLUDED.completion_price, EXCLUDED.cached_prompt_price, EXCLUDED.cache_write_price,
       EXCLUDED.price_rules, EXCLUDED.context_length, EXCLUDED.max_completion_tokens,
       EXCLUDED.supported_parameters, EXCLUDED.quantization, EXCLUDED.status,
       EXCLUDED.deprecation_at, EXCLUDED.retirement_at, EXCLUDED.first_byte_ms,
       EXCLUDED.idle_ms, EXCLUDED.max_concurrent, EXCLUDED.requests_per_minute,
       EXCLUDED.retains_prompts, EXCLUDED.zero_data_retention)
RETURNING id"""

# The price history a snapshot carries: the changes of the last ``$1`` days (the ledger's
# oldest accepted event, plus PRICE_HISTORY_MARGIN for the cost check's lag allowance) and,
# per endpoint, the price in effect when they begin; at most the ``$2`` newest rows of each.
_SELECT_PRICE_HISTORY = """
WITH since AS (SELECT now() - make_interval(days => $1) AS t),
kept AS (
    SELECT h.*, row_number() OVER (
        PARTITION BY endpoint_id ORDER BY effective_at DESC, id DESC) AS newest
    FROM endpoint_prices h
    WHERE effective_at >= (SELECT t FROM since)
       OR id IN (SELECT DISTINCT ON (endpoint_id) id FROM endpoint_prices
                 WHERE effective_at < (SELECT t FROM since)
                 ORDER BY endpoint_id, effective_at DESC, id DESC)
)
SELECT id, endpoint_id, effective_at, prompt_price, completion_price, cached_prompt_price,
       cache_write_price, price_rules
FROM kept WHERE newest <= $2
ORDER BY endpoint_id, effective_at, id"""
# Days of price history beyond the ledger's window: covers the cost check's lag allowance
# for an event at the window's very edge.
PRICE_HISTORY_MARGIN_DAYS = 1
# Per endpoint; beyond it the oldest changes are left out (an endpoint repriced that often,
# hourly say, would otherwise make every metering snapshot megabytes).
MAX_PRICE_CHANGES = 1000

# The oldest due scheduled price of an endpoint with no older one (so an endpoint's prices
# are applied in order, even by several replicas), skipping rows another transaction holds.
_CLAIM_DUE = f"""{_SELECT_SCHEDULED} s
WHERE effective_at <= now() AND NOT EXISTS (
    SELECT 1 FROM endpoint_scheduled_prices o
    WHERE o.endpoint_id = s.endpoint_id AND o.effective_at < s.effective_at)
ORDER BY effective_at, endpoint_id LIMIT 1
FOR UPDATE SKIP LOCKED"""

_APPLY_PRICE = """
UPDATE endpoints SET prompt_price = $2, completion_price = $3, cached_prompt_price = $4,
    cache_write_price = $5, price_rules = $6::jsonb, updated_at = now()
WHERE id = $1 AND (prompt_price, completion_price, cached_prompt_price, cache_write_price,
    price_rules) IS DISTINCT FROM ($2, $3, $4, $5, $6::jsonb)"""

# The history trigger's effective time for this transaction's price changes (migration 0006);
# '' restores now().
_SET_EFFECTIVE_AT = "SELECT set_config('switchboard.price_effective_at', $1, true)"

_BUMP_VERSION = """
UPDATE catalog_version SET version = version + 1, updated_at = now()
WHERE singleton RETURNING version"""


@dataclass(frozen=True)
class AppliedPrice:
    """A scheduled price the scheduler applied."""

    endpoint_id: str
    effective_at: datetime
    catalog_version: int


@dataclass(frozen=True)
class Entries:
    """A batch of catalog entries to upsert together (the seed)."""

    providers: Sequence[catalog_pb2.Provider] = ()
    models: Sequence[catalog_pb2.Model] = ()
    endpoints: Sequence[catalog_pb2.Endpoint] = ()


class CatalogStore:
    """``price_history_days``: how far back the snapshot's price history reaches (the
    ledger's ``SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS``; :data:`PRICE_HISTORY_MARGIN_DAYS`
    more are added)."""

    def __init__(
        self, pool: asyncpg.Pool, *, price_history_days: int = DEFAULT_MAX_EVENT_AGE_DAYS
    ) -> None:
        self._pool = pool
        self._history_days = price_history_days + PRICE_HISTORY_MARGIN_DAYS

    async def version(self) -> int:
        value = await self._pool.fetchval("SELECT version FROM catalog_version")
        return int(value)

    async def list_models(
        self, *, after: str, limit: int, provider_id: str = ""
    ) -> list[catalog_pb2.Model]:
        """Up to ``limit`` models with ids greater than ``after``, ordered by id."""
        async with self._pool.acquire() as conn, _read_only(conn):
            rows = await conn.fetch(
                f"""SELECT {_MODEL_COLUMNS} FROM models m
                    WHERE m.id > $1 AND ($2 = '' OR EXISTS (
                        SELECT 1 FROM endpoints e WHERE e.model_id = m.id
                        AND e.provider_id = $2))
                    ORDER BY m.id LIMIT $3""",
                after,
                provider_id,
                limit,
            )
            return await _with_endpoints(conn, rows)

    async def get_model(self, model_id: str) -> catalog_pb2.Model | None:
        async with self._pool.acquire() as conn, _read_only(conn):
            return await _fetch_model(conn, model_id)

    async def list_providers(self) -> list[catalog_pb2.Provider]:
        rows = await self._pool.fetch(f"{_SELECT_PROVIDERS} ORDER BY id")
        return [convert.provider_from_row(row) for row in rows]

    async def snapshot(self) -> catalog_pb2.WatchCatalogResponse:
        """The whole catalog, its version and the price history, read consistently."""
        async with self._pool.acquire() as conn, _read_only(conn):
            version = await conn.fetchval("SELECT version FROM catalog_version")
            providers = await conn.fetch(f"{_SELECT_PROVIDERS} ORDER BY id")
            models = await conn.fetch(f"SELECT {_MODEL_COLUMNS} FROM models ORDER BY id")
            endpoints = await conn.fetch(f"{_SELECT_ENDPOINTS} ORDER BY model_id, id")
            scheduled = await conn.fetch(f"{_SELECT_SCHEDULED} {_ORDER_SCHEDULED}")
            prices = await conn.fetch(_SELECT_PRICE_HISTORY, self._history_days, MAX_PRICE_CHANGES)
        return catalog_pb2.WatchCatalogResponse(
            version=version,
            providers=[convert.provider_from_row(row) for row in providers],
            models=convert.models_from_rows(models, endpoints, scheduled),
            price_history=convert.price_history_from_rows(prices),
        )

    async def upsert_provider(self, provider: catalog_pb2.Provider) -> catalog_pb2.Provider:
        async def write(conn: asyncpg.Connection) -> bool:
            return await _upsert_provider(conn, provider)

        await self._write(write)
        row = await self._pool.fetchrow(f"{_SELECT_PROVIDERS} WHERE id = $1", provider.id)
        return convert.provider_from_row(row)

    async def upsert_model(self, model: catalog_pb2.Model) -> catalog_pb2.Model:
        async def write(conn: asyncpg.Connection) -> bool:
            return await _upsert_model(conn, model)

        await self._write(write)
        stored = await self.get_model(model.id)
        assert stored is not None  # models are never deleted
        return stored

    async def upsert_endpoint(self, endpoint: catalog_pb2.Endpoint) -> catalog_pb2.Endpoint:
        async def write(conn: asyncpg.Connection) -> bool:
            await _require_references(conn, endpoint.model_id, endpoint.provider_id)
            return await _upsert_endpoint(conn, endpoint)

        await self._write(write)
        async with self._pool.acquire() as conn, _read_only(conn):
            row = await conn.fetchrow(f"{_SELECT_ENDPOINTS} WHERE id = $1", endpoint.id)
            scheduled = await conn.fetch(
                f"{_SELECT_SCHEDULED} WHERE endpoint_id = $1 {_ORDER_SCHEDULED}", endpoint.id
            )
        return convert.endpoint_from_row(
            row, convert.scheduled_from_rows(scheduled).get(row["id"], ())
        )

    async def upsert_entries(self, entries: Entries) -> int | None:
        """Upserts a batch in one transaction; returns the new version, or None if unchanged."""

        async def write(conn: asyncpg.Connection) -> bool:
            changed = False
            for provider in entries.providers:
                changed |= await _upsert_provider(conn, provider)
            for model in entries.models:
                changed |= await _upsert_model(conn, model)
            for endpoint in entries.endpoints:
                changed |= await _upsert_endpoint(conn, endpoint)
            return changed

        return await self._write(write)

    async def apply_due_price(self) -> AppliedPrice | None:
        """Applies one due scheduled price (see the module docstring); None when none is
        due that another transaction does not hold."""
        applied: list[tuple[str, datetime]] = []

        async def write(conn: asyncpg.Connection) -> bool:
            row = await conn.fetchrow(_CLAIM_DUE)
            if row is None:
                return False
            await conn.execute(_SET_EFFECTIVE_AT, row["effective_at"].isoformat())
            pricing = convert.pricing_from_row(row)
            await conn.execute(_APPLY_PRICE, row["endpoint_id"], *convert.price_columns(pricing))
            await conn.execute(_SET_EFFECTIVE_AT, "")
            await conn.execute(
                """DELETE FROM endpoint_scheduled_prices
                   WHERE endpoint_id = $1 AND effective_at = $2""",
                row["endpoint_id"],
                row["effective_at"],
            )
            applied.append((row["endpoint_id"], row["effective_at"]))
            return True

        version = await self._write(write)
        if version is None:
            return None
        endpoint_id, effective_at = applied[0]
        log.info(
            "scheduled price applied",
            extra={
                "endpoint_id": endpoint_id,
                "effective_at": effective_at.isoformat(),
                "catalog_version": version,
            },
        )
        return AppliedPrice(endpoint_id, effective_at, version)

    async def next_scheduled(self) -> tuple[datetime | None, datetime]:
        """The earliest scheduled time (None when nothing is scheduled) and the database's
        clock now, so that waits are measured on the clock the times are compared with."""
        row = await self._pool.fetchrow(
            "SELECT min(effective_at) AS next, clock_timestamp() AS now"
            " FROM endpoint_scheduled_prices"
        )
        return row["next"], row["now"]

    async def _write(self, write: Callable[[asyncpg.Connection], Awaitable[bool]]) -> int | None:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await write(conn):
                return None
            # Last, so that the version row is locked only briefly and always after the rows.
            version = int(await conn.fetchval(_BUMP_VERSION))
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(version))
        log.info("catalog changed", extra={"catalog_version": version, "actor": actor()})
        return version


def _read_only(conn: asyncpg.Connection) -> asyncpg.transaction.Transaction:
    return conn.transaction(isolation="repeatable_read", readonly=True)


async def _with_endpoints(
    conn: asyncpg.Connection, model_rows: Sequence[asyncpg.Record]
) -> list[catalog_pb2.Model]:
    if not model_rows:
        return []
    endpoints = await conn.fetch(
        f"{_SELECT_ENDPOINTS} WHERE model_id = ANY($1::text[]) ORDER BY model_id, id",
        [row["id"] for row in model_rows],
    )
    scheduled = await conn.fetch(
        f"{_SELECT_SCHEDULED} WHERE endpoint_id = ANY($1::text[]) {_ORDER_SCHEDULED}",
        [row["id"] for row in endpoints],
    )
    return convert.models_from_rows(model_rows, endpoints, scheduled)


async def _fetch_model(conn: asyncpg.Connection, model_id: str) -> catalog_pb2.Model | None:
    rows = await conn.fetch(f"SELECT {_MODEL_COLUMNS} FROM models WHERE id = $1", model_id)
    models = await _with_endpoints(conn, rows)
    return models[0] if models else None


async def _require_references(conn: asyncpg.Connection, model_id: str, provider_id: str) -> None:
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM models WHERE id = $1) AS model,
                  EXISTS (SELECT 1 FROM providers WHERE id = $2) AS provider""",
        model_id,
        provider_id,
    )
    missing: dict[str, str] = {}
    if not row["model"]:
        missing["model_id"] = model_id
    if not row["provider"]:
        missing["provider_id"] = provider_id
    if missing:
        what = " and ".join(
            f"{key.removesuffix('_id')} {value!r}" for key, value in missing.items()
        )
        raise FailedPrecondition(
            f"endpoint refers to {what}, which does not exist; create it first",
            reason="CATALOG_REFERENCE_MISSING",
            metadata=missing,
        )


async def _upsert_provider(conn: asyncpg.Connection, provider: catalog_pb2.Provider) -> bool:
    row = await conn.fetchval(
        _UPSERT_PROVIDER,
        provider.id,
        provider.display_name,
        convert.api_format_to_db(provider.api_format),
        provider.base_url,
        provider.dialect,
    )
    return row is not None


async def _upsert_model(conn: asyncpg.Connection, model: catalog_pb2.Model) -> bool:
    row = await conn.fetchval(
        _UPSERT_MODEL,
        model.id,
        model.display_name,
        model.description,
        model.context_length,
        list(model.input_modalities),
        list(model.output_modalities),
        convert.time_to_db(model, "deprecation_time"),
        convert.time_to_db(model, "retirement_time"),
        model.successor_model_id,
        model.stall_limits.first_byte_ms,
        model.stall_limits.idle_ms,
        *convert.hedge_columns(model.hedge),
    )
    return row is not None


async def _upsert_endpoint(conn: asyncpg.Connection, endpoint: catalog_pb2.Endpoint) -> bool:
    """Upserts the endpoint and replaces its schedule (see the module docstring)."""
    now: datetime = await conn.fetchval("SELECT now()")
    schedule = sorted(
        (
            (change.effective_time.ToDatetime(tzinfo=UTC), change.pricing)
            for change in endpoint.scheduled_prices
        ),
        key=lambda item: item[0],
    )
    due = [item for item in schedule if item[0] <= now]
    later = [item for item in schedule if item[0] > now]
    # Lock the schedule first (the scheduler's order: schedule row, then endpoint).
    stored = await conn.fetch(
        f"{_SELECT_SCHEDULED} WHERE endpoint_id = $1 ORDER BY effective_at FOR UPDATE",
        endpoint.id,
    )
    pricing = endpoint.pricing
    if due:
        effective_at, pricing = due[-1]
        await conn.execute(_SET_EFFECTIVE_AT, effective_at.isoformat())
    row = await conn.fetchval(
        _UPSERT_ENDPOINT,
        endpoint.id,
        endpoint.model_id,
        endpoint.provider_id,
        endpoint.upstream_model,
        *convert.price_columns(pricing),
        endpoint.context_length,
        endpoint.max_completion_tokens,
        list(endpoint.supported_parameters),
        endpoint.quantization,
        convert.status_to_db(endpoint.status),
        convert.time_to_db(endpoint, "deprecation_time"),
        convert.time_to_db(endpoint, "retirement_time"),
        endpoint.stall_limits.first_byte_ms,
        endpoint.stall_limits.idle_ms,
        endpoint.capacity.max_concurrent,
        endpoint.capacity.requests_per_minute,
        endpoint.data_policy.retains_prompts,
        endpoint.data_policy.zero_data_retention,
    )
    if due:
        await conn.execute(_SET_EFFECTIVE_AT, "")
    wanted = [convert.scheduled_key(at, price) for at, price in later]
    if [convert.scheduled_key_of_row(r) for r in stored] == wanted:
        return row is not None
    await conn.execute("DELETE FROM endpoint_scheduled_prices WHERE endpoint_id = $1", endpoint.id)
    await conn.executemany(
        f"""INSERT INTO endpoint_scheduled_prices ({_SCHEDULED_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)""",
        [(endpoint.id, at, *convert.price_columns(price)) for at, price in later],
    )
    return True
