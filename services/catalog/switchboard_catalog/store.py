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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

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
    supported_parameters, quantization, status, deprecation_at, retirement_at"""
_MODEL_COLUMNS = """id, display_name, description, context_length, input_modalities,
    output_modalities, updated_at, deprecation_at, retirement_at, successor_model_id"""
_SELECT_PROVIDERS = "SELECT id, display_name, api_format, base_url, dialect FROM providers"
# An endpoint's price version is its newest endpoint_prices row: the trigger appends one in
# the transaction of every price change, so the newest is the one in effect.
_SELECT_ENDPOINTS = f"""SELECT {_ENDPOINT_COLUMNS},
    (SELECT max(h.id) FROM endpoint_prices h WHERE h.endpoint_id = endpoints.id) AS price_version
    FROM endpoints"""

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
     deprecation_at, retirement_at, successor_model_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET
    display_name = EXCLUDED.display_name, description = EXCLUDED.description,
    context_length = EXCLUDED.context_length, input_modalities = EXCLUDED.input_modalities,
    output_modalities = EXCLUDED.output_modalities, deprecation_at = EXCLUDED.deprecation_at,
    retirement_at = EXCLUDED.retirement_at, successor_model_id = EXCLUDED.successor_model_id,
    updated_at = now()
WHERE (m.display_name, m.description, m.context_length, m.input_modalities,
       m.output_modalities, m.deprecation_at, m.retirement_at, m.successor_model_id)
    IS DISTINCT FROM (EXCLUDED.display_name, EXCLUDED.description, EXCLUDED.context_length,
       EXCLUDED.input_modalities, EXCLUDED.output_modalities, EXCLUDED.deprecation_at,
       EXCLUDED.retirement_at, EXCLUDED.successor_model_id)
RETURNING id"""

_UPSERT_ENDPOINT = """
INSERT INTO endpoints AS e
    (id, model_id, provider_id, upstream_model, prompt_price, completion_price,
     cached_prompt_price, cache_write_price, price_rules, context_length,
     max_completion_tokens, supported_parameters, quantization, status, deprecation_at,
     retirement_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14, $15, $16)
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
    updated_at = now()
WHERE (e.upstream_model, e.prompt_price, e.completion_price, e.cached_prompt_price,
       e.cache_write_price, e.price_rules, e.context_length, e.max_completion_tokens,
       e.supported_parameters, e.quantization, e.status, e.deprecation_at, e.retirement_at)
    IS DISTINCT FROM (EXCLUDED.upstream_model, EXCLUDED.prompt_price,
       EXCLUDED.completion_price, EXCLUDED.cached_prompt_price, EXCLUDED.cache_write_price,
       EXCLUDED.price_rules, EXCLUDED.context_length, EXCLUDED.max_completion_tokens,
       EXCLUDED.supported_parameters, EXCLUDED.quantization, EXCLUDED.status,
       EXCLUDED.deprecation_at, EXCLUDED.retirement_at)
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

_BUMP_VERSION = """
UPDATE catalog_version SET version = version + 1, updated_at = now()
WHERE singleton RETURNING version"""


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
            prices = await conn.fetch(_SELECT_PRICE_HISTORY, self._history_days, MAX_PRICE_CHANGES)
        return catalog_pb2.WatchCatalogResponse(
            version=version,
            providers=[convert.provider_from_row(row) for row in providers],
            models=convert.models_from_rows(models, endpoints),
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
        row = await self._pool.fetchrow(f"{_SELECT_ENDPOINTS} WHERE id = $1", endpoint.id)
        return convert.endpoint_from_row(row)

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
    return convert.models_from_rows(model_rows, endpoints)


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
    )
    return row is not None


async def _upsert_endpoint(conn: asyncpg.Connection, endpoint: catalog_pb2.Endpoint) -> bool:
    pricing = endpoint.pricing
    row = await conn.fetchval(
        _UPSERT_ENDPOINT,
        endpoint.id,
        endpoint.model_id,
        endpoint.provider_id,
        endpoint.upstream_model,
        convert.price_to_db(pricing.prompt_usd_per_mtok),
        convert.price_to_db(pricing.completion_usd_per_mtok),
        convert.price_to_db(pricing.cached_prompt_usd_per_mtok),
        convert.price_to_db(pricing.cache_write_usd_per_mtok),
        convert.price_rules_to_db(pricing),
        endpoint.context_length,
        endpoint.max_completion_tokens,
        list(endpoint.supported_parameters),
        endpoint.quantization,
        convert.status_to_db(endpoint.status),
        convert.time_to_db(endpoint, "deprecation_time"),
        convert.time_to_db(endpoint, "retirement_time"),
    )
    return row is not None
