"""Imports providers, models, endpoints and prices from a maintained price database.

The source is pydantic's ``genai-prices`` (the data bundled with the installed package:
nothing is fetched). It was chosen over the alternatives because it models prices the way
providers publish them, which is what the catalog now stores: tiers by prompt length
(Gemini, long-context Claude), cache reads and cache writes including Anthropic's 1-hour
writes, audio/image/video input rates, time-of-day prices (DeepSeek's off-peak hours) and
prices that start on a date, across 47 providers and 2,330 models, maintained by pydantic
with a test suite and releases on PyPI. LiteLLM's ``model_prices_and_context_window.json``
is larger but flat (per-token floats, tiers as ad-hoc ``*_above_200k_tokens`` keys, no time
windows, no dated prices, floats that need rounding back to list prices); models.dev (the
``llmdb``/``aimodelsdb`` packages) has good model metadata but flat input/output/cache prices
only. Floats would also break the catalog's rule that money is exact: genai-prices' prices
are ``Decimal``.

How the data maps: :mod:`.importer_source` (prices, dates, windows) and :mod:`.importer_map`
(which providers, base URLs, model ids).

Catalog entries the import meets:

- An endpoint already in the catalog (the seed's, say) is matched by its upstream model name
  with genai-prices' own lookup, so it keeps its id, model and upstream name; only its price
  (and deprecation date) is imported. Its model and provider are left as they are.
- A source model no endpoint matches becomes a new endpoint ``<provider>:<author>/<slug>``
  (and a new model, when no model has that id). Providers are created, never changed.
- Prices the source dates in the future become the endpoint's scheduled prices (the
  catalog applies each at its time: :mod:`.scheduler`); the import makes the endpoint's
  schedule the source's, and reports each difference as a price change
  (``scheduled 2026-12-01: prompt 2 -> 4``, ``no longer scheduled 2027-01-01: ...``).
- An endpoint this source priced before that the source no longer lists is reported
  (``KIND_REMOVED_FROM_SOURCE``) once, and left serving: retiring it is an operator's call.

A dry run reads and reports. An apply writes the changed entries in one store transaction
(:meth:`CatalogStore.upsert_entries`, which bumps the catalog version only when a row really
changed, so a second apply of the same data changes nothing), then records the import and
which endpoints it priced in ``catalog_imports`` / ``catalog_import_endpoints`` (migration
0005) in a second transaction: should that one fail, the catalog is already right and the
next apply records it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog import validate
from switchboard_catalog.importer_source import (
    SOURCE,
    Source,
    SourceModel,
    read_genai_prices,
    selected_rows,
)
from switchboard_catalog.store import CatalogStore, Entries
from switchboard_core.auth import actor
from switchboard_core.money import format_usd
from switchboard_core.pricing import ALL_RATES, PriceSheet, Rates

log = logging.getLogger(__name__)

Kind = catalog_pb2.CatalogChange.Kind
MAX_SKIPPED = 1000


@dataclass
class Plan:
    changes: list[catalog_pb2.CatalogChange] = field(default_factory=list)
    providers: list[catalog_pb2.Provider] = field(default_factory=list)
    models: dict[str, catalog_pb2.Model] = field(default_factory=dict)
    endpoints: list[catalog_pb2.Endpoint] = field(default_factory=list)
    # endpoint id -> source model id, for every endpoint the source prices.
    listed: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def change(self, kind: Kind.ValueType, entry_id: str, detail: str = "") -> None:
        self.changes.append(catalog_pb2.CatalogChange(kind=kind, id=entry_id, detail=detail))


def plan_import(
    source: Source,
    current: catalog_pb2.WatchCatalogResponse,
    tracked: dict[str, tuple[str, str]],
    *,
    today: date,
) -> Plan:
    """What importing ``source`` into ``current`` changes. ``tracked``: the endpoints this
    source priced before and still listed, by id: (provider id, source model id)."""
    plan = Plan(skipped=list(source.skipped))
    providers = {p.id: p for p in current.providers}
    models = {m.id: m for m in current.models}
    endpoints = {e.id: e for m in current.models for e in m.endpoints}
    by_source = {(s.row.catalog_id, s.source_model_id): s for s in source.models}
    matched: set[tuple[str, str]] = set()
    for endpoint in endpoints.values():
        if endpoint.provider_id not in source.lookup:
            continue
        entry = _source_entry(source, by_source, endpoint, tracked)
        if entry is None:
            continue
        matched.add((endpoint.provider_id, entry.source_model_id))
        _update_endpoint(plan, endpoint, entry, models[endpoint.model_id], today)
    for entry in source.models:
        if (entry.row.catalog_id, entry.source_model_id) not in matched:
            _add_endpoint(plan, entry, providers, models, endpoints, today)
    for endpoint_id, (provider_id, _) in sorted(tracked.items()):
        if provider_id in source.lookup and endpoint_id not in plan.listed:
            plan.removed.append(endpoint_id)
            plan.change(Kind.KIND_REMOVED_FROM_SOURCE, endpoint_id, "no longer in the source")
    return plan


def _source_entry(
    source: Source,
    by_source: dict[tuple[str, str], SourceModel],
    endpoint: catalog_pb2.Endpoint,
    tracked: dict[str, tuple[str, str]],
) -> SourceModel | None:
    """The source model that prices ``endpoint``: the one it was imported from, else the one
    named exactly by its upstream model, else the one genai-prices' lookup finds (whose
    first match can be a broader model: ``deepseek-r1`` for ``deepseek-r1-0528``)."""
    provider_id = endpoint.provider_id
    candidates = [
        tracked.get(endpoint.id, ("", ""))[1],
        endpoint.upstream_model,
        source.match(provider_id, endpoint.upstream_model) or "",
    ]
    for source_id in candidates:
        if (entry := by_source.get((provider_id, source_id))) is not None:
            return entry
    return None


def _update_endpoint(
    plan: Plan,
    endpoint: catalog_pb2.Endpoint,
    entry: SourceModel,
    model: catalog_pb2.Model,
    today: date,
) -> None:
    plan.listed[endpoint.id] = entry.source_model_id
    updated = catalog_pb2.Endpoint()
    updated.CopyFrom(endpoint)
    updated.ClearField("price_version")
    details: list[str] = []
    before, after = _sheet(endpoint), PriceSheet.from_proto(entry.endpoint.pricing)
    if before != after:
        updated.pricing.CopyFrom(entry.endpoint.pricing)
        plan.change(Kind.KIND_PRICE_CHANGE, endpoint.id, price_difference(before, after))
        details.append("price")
    schedule = schedule_differences(
        after, endpoint.scheduled_prices, entry.endpoint.scheduled_prices
    )
    if schedule:
        del updated.scheduled_prices[:]
        updated.scheduled_prices.extend(entry.endpoint.scheduled_prices)
        for detail in schedule:
            plan.change(Kind.KIND_PRICE_CHANGE, endpoint.id, detail)
        details.append("schedule")
    if entry.deprecated and not endpoint.HasField("deprecation_time"):
        updated.deprecation_time.FromDatetime(_midnight(today))
        plan.change(Kind.KIND_LIFECYCLE_CHANGE, endpoint.id, f"deprecated from {today}")
        details.append("lifecycle")
    if details:
        plan.endpoints.append(updated)
    _deprecate_model(plan, model, entry, today)


def _add_endpoint(
    plan: Plan,
    entry: SourceModel,
    providers: dict[str, catalog_pb2.Provider],
    models: dict[str, catalog_pb2.Model],
    endpoints: dict[str, catalog_pb2.Endpoint],
    today: date,
) -> None:
    endpoint, model = entry.endpoint, entry.model
    where = f"{entry.row.catalog_id} {entry.source_model_id}"
    if endpoint.id in endpoints or endpoint.id in plan.listed:
        held_by = endpoints[endpoint.id].upstream_model if endpoint.id in endpoints else "another"
        plan.skipped.append(f"{where}: endpoint {endpoint.id} already serves {held_by!r}")
        return
    violations = validate.endpoint_violations(endpoint, "endpoint")
    if model.id not in models and model.id not in plan.models:
        violations += validate.model_violations(model, "model")
    if violations:
        why = "; ".join(f"{path}: {problem}" for path, problem in violations)
        if not endpoint.context_length:
            why = "no context window in the source"
        plan.skipped.append(f"{where}: {why}")
        return
    row = entry.row
    if row.catalog_id not in providers and all(p.id != row.catalog_id for p in plan.providers):
        plan.providers.append(
            catalog_pb2.Provider(
                id=row.catalog_id,
                display_name=row.display_name,
                api_format=row.api_format,
                base_url=row.base_url,
                dialect=row.dialect,
            )
        )
        plan.change(Kind.KIND_NEW_PROVIDER, row.catalog_id, row.base_url)
    if model.id not in models and model.id not in plan.models:
        new_model = catalog_pb2.Model()
        new_model.CopyFrom(model)
        if entry.deprecated and row.author and model.id.startswith(f"{row.author}/"):
            new_model.deprecation_time.FromDatetime(_midnight(today))
        plan.models[model.id] = new_model
        plan.change(Kind.KIND_NEW_MODEL, model.id, model.display_name)
    elif model.id in models:
        _deprecate_model(plan, models[model.id], entry, today)
    new_endpoint = catalog_pb2.Endpoint()
    new_endpoint.CopyFrom(endpoint)
    if entry.deprecated:
        new_endpoint.deprecation_time.FromDatetime(_midnight(today))
    plan.endpoints.append(new_endpoint)
    plan.listed[endpoint.id] = entry.source_model_id
    sheet = PriceSheet.from_proto(endpoint.pricing)
    plan.change(
        Kind.KIND_NEW_ENDPOINT,
        endpoint.id,
        "; ".join(
            [
                f"{endpoint.upstream_model}: {describe(sheet)}",
                *schedule_differences(sheet, (), endpoint.scheduled_prices),
            ]
        ),
    )


def _deprecate_model(plan: Plan, model: catalog_pb2.Model, entry: SourceModel, today: date) -> None:
    """A model takes the deprecation its own author's provider announces."""
    author = entry.row.author
    if not (entry.deprecated and author and model.id.startswith(f"{author}/")):
        return
    if model.HasField("deprecation_time") or model.id in plan.models:
        return
    updated = catalog_pb2.Model()
    updated.CopyFrom(model)
    updated.ClearField("endpoints")
    updated.ClearField("update_time")
    updated.deprecation_time.FromDatetime(_midnight(today))
    plan.models[model.id] = updated
    plan.change(Kind.KIND_LIFECYCLE_CHANGE, model.id, f"deprecated from {today}")


def _sheet(endpoint: catalog_pb2.Endpoint) -> PriceSheet | None:
    try:
        return PriceSheet.from_proto(endpoint.pricing)
    except ValueError:
        return None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# --- describing prices ---------------------------------------------------------------------


def describe(sheet: PriceSheet) -> str:
    """``prompt 1.25, completion 10; above 200000: prompt 2.5; 00:30-16:30 UTC: ...``
    (token rates in USD per million tokens, fees in USD each)."""
    return "; ".join(
        filter(None, [_rates_text(sheet.base), _tiers_text(sheet), _windows_text(sheet)])
    )


def price_difference(before: PriceSheet | None, after: PriceSheet) -> str:
    """Rate by rate, ``prompt 0.2 -> 0.15``; tiers and windows as a whole when they differ."""
    if before is None:
        return f"(unreadable) -> {describe(after)}"
    parts = []
    for name in ALL_RATES:
        old, new = getattr(before.base, name), getattr(after.base, name)
        if old != new:
            parts.append(f"{name} {_text(old)} -> {_text(new)}")
    if before.tiers != after.tiers:
        parts.append(f"tiers [{_tiers_text(before)}] -> [{_tiers_text(after)}]")
    if before.windows != after.windows:
        parts.append(f"windows [{_windows_text(before)}] -> [{_windows_text(after)}]")
    return "; ".join(parts)


def schedule_differences(
    current: PriceSheet,
    before: Sequence[catalog_pb2.PriceChange],
    after: Sequence[catalog_pb2.PriceChange],
) -> list[str]:
    """One line per scheduled price that differs: ``scheduled 2026-12-01: prompt 2 -> 4``
    (against the price before it in the new schedule, the first against ``current``), and
    ``no longer scheduled <date>: <price>`` for a date the new schedule drops."""
    old = {_day(change): _sheet_of(change) for change in before}
    new_days = {_day(change) for change in after}
    lines = []
    previous: PriceSheet | None = current
    for change in after:
        day, sheet = _day(change), PriceSheet.from_proto(change.pricing)
        if old.get(day) != sheet:
            lines.append(f"scheduled {day}: {price_difference(previous, sheet)}")
        previous = sheet
    lines += [
        f"no longer scheduled {day}: {describe(sheet) if sheet else '(unreadable)'}"
        for day, sheet in old.items()
        if day not in new_days
    ]
    return lines


def _day(change: catalog_pb2.PriceChange) -> str:
    """The scheduled time: a date when it is midnight UTC (as the source's are)."""
    at = change.effective_time.ToDatetime(tzinfo=UTC)
    return f"{at:%Y-%m-%d}" if at == _midnight(at.date()) else f"{at:%Y-%m-%dT%H:%M:%SZ}"


def _sheet_of(change: catalog_pb2.PriceChange) -> PriceSheet | None:
    try:
        return PriceSheet.from_proto(change.pricing)
    except ValueError:
        return None


def _rates_text(rates: Rates) -> str:
    return ", ".join(f"{name} {_text(value)}" for name, value in rates.set_rates().items())


def _tiers_text(sheet: PriceSheet) -> str:
    return "; ".join(f"above {t.prompt_tokens_above}: {_rates_text(t.rates)}" for t in sheet.tiers)


def _windows_text(sheet: PriceSheet) -> str:
    return "; ".join(
        f"{_hh_mm(w.start)}-{_hh_mm(w.end)} UTC: {_rates_text(w.rates)}" for w in sheet.windows
    )


def _hh_mm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _text(value: Decimal | None) -> str:
    return "(none)" if value is None else format_usd(value)


# --- running an import ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    source: str
    source_version: str
    applied: bool
    changes: list[catalog_pb2.CatalogChange]
    catalog_version: int
    skipped: list[str]

    def to_proto(self) -> catalog_pb2.ImportCatalogResponse:
        return catalog_pb2.ImportCatalogResponse(
            source=self.source,
            source_version=self.source_version,
            applied=self.applied,
            changes=self.changes,
            catalog_version=self.catalog_version,
            skipped=self.skipped[:MAX_SKIPPED],
        )


class CatalogImporter:
    """Runs imports against the catalog (``store``) and records them (``pool``)."""

    def __init__(self, store: CatalogStore, pool: asyncpg.Pool) -> None:
        self._store = store
        self._pool = pool

    async def run(
        self,
        *,
        dry_run: bool,
        provider_ids: Sequence[str] = (),
        today: date | None = None,
        source: Source | None = None,
    ) -> ImportResult:
        """Imports the bundled genai-prices data (or ``source``, for tests)."""
        today = today or datetime.now(UTC).date()
        rows = selected_rows(provider_ids)
        if source is None:
            source = read_genai_prices(today, rows)
        current = await self._store.snapshot()
        tracked = await self._tracked(source.name)
        plan = plan_import(source, current, tracked, today=today)
        version = current.version
        applied = False
        if not dry_run:
            entries = Entries(
                providers=plan.providers,
                models=list(plan.models.values()),
                endpoints=plan.endpoints,
            )
            new_version = await self._store.upsert_entries(entries) if plan.changes else None
            version = new_version or await self._store.version()
            await self._record(source, plan, new_version)
            applied = True
            log.info(
                "catalog imported",
                extra={
                    "source": source.name,
                    "changes": len(plan.changes),
                    "catalog_version": version,
                },
            )
        return ImportResult(
            source=source.name,
            source_version=source.version,
            applied=applied,
            changes=plan.changes,
            catalog_version=version,
            skipped=plan.skipped,
        )

    async def _tracked(self, source: str) -> dict[str, tuple[str, str]]:
        rows = await self._pool.fetch(
            """SELECT i.endpoint_id, e.provider_id, i.source_model_id
               FROM catalog_import_endpoints i
               JOIN endpoints e ON e.id = i.endpoint_id
               WHERE i.source = $1 AND i.removed_at IS NULL""",
            source,
        )
        return {row["endpoint_id"]: (row["provider_id"], row["source_model_id"]) for row in rows}

    async def _record(self, source: Source, plan: Plan, version: int | None) -> None:
        summary = Counter(Kind.Name(c.kind).removeprefix("KIND_").lower() for c in plan.changes)
        async with self._pool.acquire() as conn, conn.transaction():
            import_id = await conn.fetchval(
                """INSERT INTO catalog_imports
                       (source, source_version, actor, catalog_version, summary)
                   VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id""",
                source.name,
                source.version,
                actor(),
                version,
                json.dumps({**summary, "skipped": len(plan.skipped)}, sort_keys=True),
            )
            await conn.executemany(
                """INSERT INTO catalog_import_endpoints
                       (source, endpoint_id, source_model_id, last_import_id)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (source, endpoint_id) DO UPDATE SET
                       source_model_id = EXCLUDED.source_model_id,
                       last_import_id = EXCLUDED.last_import_id, removed_at = NULL""",
                [(source.name, eid, sid, import_id) for eid, sid in sorted(plan.listed.items())],
            )
            await conn.execute(
                """UPDATE catalog_import_endpoints SET removed_at = now(), last_import_id = $3
                   WHERE source = $1 AND endpoint_id = ANY($2::text[])""",
                source.name,
                plan.removed,
                import_id,
            )


__all__ = ["SOURCE", "CatalogImporter", "ImportResult", "Plan", "describe", "plan_import"]
