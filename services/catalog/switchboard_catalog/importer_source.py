"""Reads the price database bundled with ``genai-prices`` into catalog terms (no database).

Each model of a mapped provider (:mod:`.importer_map`) becomes a :class:`SourceModel`: a
proposed model and endpoint with its price as a ``common.v1.Pricing``, or a line in
``skipped`` saying why not. The price is the one in force ``today``:

- ``ModelPrice`` keys map one to one (:data:`~.importer_map.PRICE_KEYS`); per-thousand
  counts become per-unit fees.
- ``TieredPrices`` become ``PriceTier`` s. genai-prices tiers each key on its own, by total
  input tokens, as cliffs (``input_tokens > start`` prices the whole request at the tier),
  which is exactly ``prompt_tokens_above``; the catalog's tiers set every tiered key at each
  threshold that any key uses.
- Conditional prices are read the way genai-prices reads them (last active wins): walking
  back from the last, ``TimeOfDateConstraint`` prices become ``PriceWindow`` s until the first
  unconstrained or ``StartDateConstraint`` price in force today, which is the base. Each
  start date still to come is a scheduled price (``Endpoint.scheduled_prices``): the whole
  price genai-prices reads on that date, effective at 00:00 UTC of it (its constraint
  compares the request's UTC date), left out when it equals the price before it. A window's
  price is complete in the
  source; in the catalog a window overrides the base rate by rate, so every rate the base
  sets is set in the window too (to the window's own fallback where the source leaves it).
- ``price_variants`` (batch, service tiers, fast mode) are request options the router does
  not send: left out, and counted in ``skipped``.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib import metadata, resources
from typing import Any

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog import importer_map as mapping
from switchboard_catalog import validate
from switchboard_core.catalog_ids import model_id_problem
from switchboard_core.pricing import PriceSheet, Rates, Tier, Window, tier_problems

SOURCE = "genai-prices"
SOURCES = frozenset({SOURCE})
_VERSION_SEP = re.compile(r"(\d)-(\d)(?=$|-)")


class SourceProblem(ValueError):
    """One source model cannot be imported; the message says why."""


@dataclass(frozen=True)
class SourceModel:
    row: mapping.ProviderRow
    source_model_id: str
    # Proposed entries for a model the catalog lacks (a matched catalog model is kept).
    model: catalog_pb2.Model
    endpoint: catalog_pb2.Endpoint
    deprecated: bool


@dataclass
class Source:
    name: str
    version: str
    models: list[SourceModel] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # Per catalog provider id, the source's models in its lookup order: (matches, id).
    lookup: dict[str, list[tuple[Callable[[str], bool], str]]] = field(default_factory=dict)

    def match(self, provider_id: str, upstream_model: str) -> str | None:
        """The source model id an upstream model name refers to, as genai-prices finds it
        (the first model whose match logic accepts it)."""
        ref = upstream_model.lower()
        for matches, source_id in self.lookup.get(provider_id, ()):
            if matches(ref):
                return source_id
        return None


def selected_rows(provider_ids: Iterable[str]) -> list[mapping.ProviderRow]:
    """The mapped providers to import: those named (catalog ids), else every default one."""
    wanted = set(provider_ids)
    if wanted:
        return [row for row in mapping.PROVIDERS if row.catalog_id in wanted]
    return [row for row in mapping.PROVIDERS if row.default]


def read_genai_prices(
    today: date, rows: list[mapping.ProviderRow], providers: list[Any] | None = None
) -> Source:
    """The mapped models of ``rows`` (``providers``: the bundled data unless given)."""
    if providers is None:
        from genai_prices.data import providers as bundled

        providers = bundled
    source = Source(name=SOURCE, version=source_version())
    by_source_id = {row.source_id: row for row in rows}
    variants = 0
    ignored: Counter[str] = Counter()
    for provider in providers:
        row = by_source_id.get(provider.id)
        if row is None:
            if provider.id not in mapping.PROVIDERS_BY_SOURCE_ID:
                source.skipped.append(
                    f"provider {provider.id} ({provider.name}): no known base URL and wire"
                    f" format for it; {len(provider.models)} models"
                )
            continue
        source.lookup[row.catalog_id] = [(m.is_match, m.id) for m in provider.models]
        for info in provider.models:
            try:
                entry, keys = _source_model(row, info, today)
            except SourceProblem as problem:
                source.skipped.append(f"{row.catalog_id} {info.id}: {problem}")
                continue
            source.models.append(entry)
            ignored.update(keys)
            variants += bool(info.price_variants)
            source.skipped.extend(_schedule(entry, info, today))
    if variants:
        source.skipped.append(
            f"price variants (batch, service tiers, fast mode) of {variants} models: request"
            " options the router does not send"
        )
    source.skipped.extend(
        f"{key} of {count} models: {mapping.IGNORED_KEYS[key]}"
        for key, count in sorted(ignored.items())
    )
    return source


def source_version() -> str:
    """The package version and a digest of its data module (genai-prices dates no data)."""
    version = metadata.version("genai-prices")
    data = resources.files("genai_prices").joinpath("data.py").read_bytes()
    return f"{version} (data sha256:{hashlib.sha256(data).hexdigest()[:12]})"


def _source_model(row: mapping.ProviderRow, info: Any, today: date) -> tuple[SourceModel, set[str]]:
    """The proposed entries; a context length of 0 means the source gives none (the entry can
    still price a catalog endpoint, but not create one: the importer checks)."""
    if mapping.NOT_A_MODEL.search(info.id):
        raise SourceProblem("a fine-tune template or a variant, not a model id")
    if mapping.NOT_CHAT.search(info.id):
        raise SourceProblem("not a chat model")
    if row.skip and row.skip.search(info.id):
        raise SourceProblem(row.skip_reason)
    sheet, ignored = price_sheet(info, today)
    model_id = catalog_model_id(row, info.id)
    problem = model_id_problem(model_id)
    if problem:
        raise SourceProblem(f"model id {model_id!r}: {problem}")
    pricing = sheet.to_proto()
    violations = validate.pricing_violations(pricing, "pricing")
    if violations:
        raise SourceProblem("; ".join(f"{path}: {why}" for path, why in violations))
    keys = _price_keys(info)
    context = info.context_window or 0
    model = catalog_pb2.Model(
        id=model_id,
        display_name=(info.name or info.id)[:200],
        description=(info.description or "")[:4000],
        context_length=context,
        input_modalities=[
            "text",
            *sorted({mapping.MODALITIES_IN[k] for k in keys if k in mapping.MODALITIES_IN}),
        ],
        output_modalities=[
            "text",
            *sorted({mapping.MODALITIES_OUT[k] for k in keys if k in mapping.MODALITIES_OUT}),
        ],
    )
    endpoint = validate.normalized_endpoint(
        catalog_pb2.Endpoint(
            model_id=model_id,
            provider_id=row.catalog_id,
            upstream_model=info.id,
            pricing=pricing,
            context_length=context,
        )
    )
    return SourceModel(row, info.id, model, endpoint, bool(info.deprecated)), ignored


def catalog_model_id(row: mapping.ProviderRow, source_model_id: str) -> str:
    """``<author>/<slug>``: the slug is the source id's last segment, lower case (versions
    dotted for providers that dash them); the author comes from the slug's prefix, else the
    provider's own, else the provider id."""
    slug = source_model_id.rsplit("/", 1)[-1].lower()
    if row.dotted_versions:
        slug = _VERSION_SEP.sub(r"\1.\2", slug)
    author = next((a for pattern, a in mapping.AUTHORS if pattern.search(slug)), "")
    return f"{author or row.author or row.catalog_id}/{slug}"


# --- prices --------------------------------------------------------------------------------


def price_sheet(info: Any, today: date) -> tuple[PriceSheet, set[str]]:
    """The price ``info`` has today, and the source keys left out (IGNORED_KEYS)."""
    from genai_prices import types

    conditional = (
        [types.ConditionalPrice(prices=info.prices)]
        if isinstance(info.prices, types.ModelPrice)
        else list(info.prices)
    )
    base_price = None
    windowed: list[Any] = []
    for entry in reversed(conditional):
        constraint = entry.constraint
        if isinstance(constraint, types.TimeOfDateConstraint):
            windowed.append(entry)
        elif constraint is None or constraint.start_date <= today:
            base_price = entry.prices
            break
    if base_price is None:  # nothing in force: genai-prices uses the first
        base_price = conditional[0].prices
    base, tiers, ignored = _rates(base_price)
    if base.prompt is None or base.completion is None:
        raise SourceProblem("no input and output token prices (not a chat model)")
    windows: list[Window] = []
    for entry in reversed(windowed):
        rates, window_tiers, more = _rates(entry.prices)
        ignored |= more
        if window_tiers or tiers:
            raise SourceProblem("tiers together with time-of-day prices")
        windows.append(
            Window(
                _minute(entry.constraint.start_time),
                _minute(entry.constraint.end_time),
                _completed(rates, base),
            )
        )
    sheet = PriceSheet(base, tiers, tuple(windows))
    problems = tier_problems(sheet)
    if problems:
        raise SourceProblem("; ".join(f"{path}: {why}" for path, why in problems))
    return sheet, ignored


def _rates(price: Any) -> tuple[Rates, tuple[Tier, ...], set[str]]:
    from genai_prices import types

    flat: dict[str, Decimal] = {}
    tiered: dict[str, list[tuple[int, Decimal]]] = {}
    ignored: set[str] = set()
    values = {k: v for k, v in vars(price).items() if not k.startswith("_") and v is not None}
    for key, value in values.items():
        if key in mapping.IGNORED_KEYS:
            ignored.add(key)
            continue
        if key == "cache_image_read_mtok" and value == values.get("cache_read_mtok"):
            continue  # the same as cached text: the catalog's cached rate covers it
        if key not in mapping.PRICE_KEYS:
            why = mapping.UNSUPPORTED_KEYS.get(key, "has a price the catalog does not know")
            raise SourceProblem(f"{why} ({key})")
        name, divisor = mapping.PRICE_KEYS[key]
        if isinstance(value, types.TieredPrices):
            flat[name] = value.base / divisor
            tiered[name] = [(t.start, t.price / divisor) for t in value.tiers]
        else:
            flat[name] = value / divisor
    thresholds = sorted({start for steps in tiered.values() for start, _ in steps})
    tiers = tuple(
        Tier(
            threshold,
            Rates(**{name: _at(steps, flat[name], threshold) for name, steps in tiered.items()}),
        )
        for threshold in thresholds
    )
    return Rates(**flat), tiers, ignored


def _at(steps: list[tuple[int, Decimal]], base: Decimal, threshold: int) -> Decimal:
    """A tiered key's price for prompts above ``threshold``."""
    price = base
    for start, step_price in sorted(steps):
        if start <= threshold:
            price = step_price
    return price


def _completed(rates: Rates, base: Rates) -> Rates:
    """A window's rates with every rate the base sets set too (see the module docstring)."""
    resolved = rates.resolved()
    filled = {name: getattr(resolved, name) for name in base.set_rates()}
    return Rates(**{**filled, **rates.set_rates()})


def _minute(value: time) -> int:
    if value.tzinfo is not None:
        value = datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()
    if value.second or value.microsecond:
        raise SourceProblem(f"a time-of-day price starts or ends at {value}, not on a minute")
    return value.hour * 60 + value.minute


def start_of(day: date) -> datetime:
    """00:00 UTC of ``day``: when a genai-prices start date takes effect."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def scheduled_dates(info: Any, today: date) -> list[date]:
    """The start dates of ``info``'s prices still to come, in order."""
    from genai_prices import types

    if isinstance(info.prices, types.ModelPrice):
        return []
    return sorted(
        {
            entry.constraint.start_date
            for entry in info.prices
            if isinstance(entry.constraint, types.StartDateConstraint)
            and entry.constraint.start_date > today
        }
    )


def _schedule(entry: SourceModel, info: Any, today: date) -> list[str]:
    """Adds the source's prices still to come to ``entry.endpoint.scheduled_prices``;
    returns the skipped lines for those the catalog cannot hold."""
    skipped: list[str] = []
    where = f"{entry.row.catalog_id} {info.id}"
    before = PriceSheet.from_proto(entry.endpoint.pricing)
    for day in scheduled_dates(info, today):
        if len(entry.endpoint.scheduled_prices) == validate.MAX_SCHEDULED_PRICES:
            skipped.append(f"{where}: a price from {day}: more than the catalog schedules")
            continue
        try:
            sheet, _ = price_sheet(info, day)
            pricing = sheet.to_proto()
            violations = validate.pricing_violations(pricing, "pricing")
            if violations:
                raise SourceProblem("; ".join(f"{path}: {why}" for path, why in violations))
        except SourceProblem as problem:
            skipped.append(f"{where}: the price from {day} is not imported: {problem}")
            continue
        if sheet == before:
            continue
        change = entry.endpoint.scheduled_prices.add(pricing=pricing)
        change.effective_time.FromDatetime(start_of(day))
        before = sheet
    return skipped


def _price_keys(info: Any) -> set[str]:
    from genai_prices import types

    prices = (
        [info.prices]
        if isinstance(info.prices, types.ModelPrice)
        else [entry.prices for entry in info.prices]
    )
    return {k for p in prices for k, v in vars(p).items() if v is not None}
