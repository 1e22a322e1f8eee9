"""The seed file: real providers, models and list prices, upserted at start-up.

Format (``data/seed.json``)::

    {"as_of": "YYYY-MM-DD", "sources": [pricing page URLs], "notes": [...],
     "providers": [Provider], "models": [Model], "endpoints": [Endpoint]}

Entries use the proto JSON mapping of ``switchboard.catalog.v1`` (unknown keys are errors);
prices are decimal strings, never JSON numbers. A price may have every rate of
``common.v1.Pricing``, ``tiers`` (``{"prompt_tokens_above": 200000, "pricing": {...}}``) and
``windows`` (``{"start_utc": "16:30", "end_utc": "00:30", "pricing": {...}}``). Lifecycle
dates are RFC 3339 times (``"deprecation_time": "2026-04-22T00:00:00Z"``). An endpoint's
announced price changes are ``scheduled_prices`` (``[{"effective_time":
"2026-12-01T00:00:00Z", "pricing": {...}}]``, oldest first); one whose time has passed when
the seed is applied is applied then, effective at its time (the store folds it in). A model's
``successor_model_id`` must name a model in the seed. An endpoint's ``id`` may be left out. The
demo provider's base URL comes from configuration (``SWITCHBOARD_DEMO_BASE_URL``). Every
provider's base URL, the demo's included, must pass the upstream address policy
(``switchboard_core.upstreams``): the demo upstream's host (127.0.0.1 by default) loads only
when it is on ``SWITCHBOARD_UPSTREAM_ALLOWLIST``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog import validate
from switchboard_catalog.store import CatalogStore, Entries
from switchboard_core.upstreams import UpstreamPolicy

log = logging.getLogger(__name__)

DEMO_PROVIDER_ID = "switchboard"
_LISTS = ("providers", "models", "endpoints")
_TOP_LEVEL = {"as_of", "sources", "notes", *_LISTS}

M = TypeVar("M", bound=Message)


class SeedError(ValueError):
    """The seed file is invalid; the message names the entry and the field."""


@dataclass(frozen=True)
class Seed:
    as_of: str
    sources: tuple[str, ...]
    entries: Entries


def load_seed(path: Path, *, policy: UpstreamPolicy, demo_base_url: str | None = None) -> Seed:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SeedError(f"seed file {path}: cannot read it: {error}") from error
    return parse_seed(text, source=str(path), policy=policy, demo_base_url=demo_base_url)


def parse_seed(
    text: str, *, source: str, policy: UpstreamPolicy, demo_base_url: str | None = None
) -> Seed:
    """The seed in ``text``; :class:`SeedError` lists every problem, base URLs the upstream
    address ``policy`` refuses included."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as error:
        raise SeedError(f"seed file {source}: not JSON: {error}") from error
    if not isinstance(data, dict):
        raise SeedError(f"seed file {source}: expected a JSON object at the top level")
    problems = _top_level_problems(data)
    if any(not isinstance(data.get(key, []), list) for key in _LISTS):
        raise SeedError(f"seed file {source}:\n  " + "\n  ".join(problems))
    problems += [
        f"{path}: a JSON number; write prices and amounts as strings"
        for path in _float_paths(data, "")
    ]

    def check_provider(provider: catalog_pb2.Provider, prefix: str) -> validate.Violations:
        if not demo_base_url or provider.id != DEMO_PROVIDER_ID:
            return validate.provider_violations(provider, prefix, policy=policy)
        provider.base_url = demo_base_url  # checked like any other base URL
        url_path = f"{prefix}.base_url"
        return [
            (path, f"{why} (from SWITCHBOARD_DEMO_BASE_URL)" if path == url_path else why)
            for path, why in validate.provider_violations(provider, prefix, policy=policy)
        ]

    providers, more = _parse_list(data, "providers", catalog_pb2.Provider, check_provider)
    problems += more
    models, more = _parse_list(data, "models", catalog_pb2.Model, _check_model)
    problems += more
    endpoints, more = _parse_list(data, "endpoints", catalog_pb2.Endpoint, _check_endpoint)
    problems += more
    problems += _reference_problems(providers, models, endpoints)
    if problems:
        raise SeedError(f"seed file {source}:\n  " + "\n  ".join(problems))
    entries = Entries(
        providers=providers,
        models=models,
        endpoints=[validate.normalized_endpoint(endpoint) for endpoint in endpoints],
    )
    return Seed(as_of=data["as_of"], sources=tuple(data["sources"]), entries=entries)


async def apply_seed(store: CatalogStore, seed: Seed) -> int | None:
    """Upserts the seed in one transaction; returns the new version, or None if unchanged."""
    version = await store.upsert_entries(seed.entries)
    log.info(
        "catalog seeded",
        extra={
            "providers": len(seed.entries.providers),
            "models": len(seed.entries.models),
            "endpoints": len(seed.entries.endpoints),
            "seed_as_of": seed.as_of,
            "catalog_version": version,
        },
    )
    return version


def _top_level_problems(data: Mapping[str, Any]) -> list[str]:
    problems = [f"{key}: unknown top-level key" for key in sorted(set(data) - _TOP_LEVEL)]
    if not isinstance(data.get("as_of"), str) or not data["as_of"]:
        problems.append("as_of: required, the date the prices were checked (YYYY-MM-DD)")
    sources = data.get("sources")
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        problems.append("sources: required, a list of pricing page URLs")
    for key in _LISTS:
        if not isinstance(data.get(key, []), list):
            problems.append(f"{key}: expected a list")
    return problems


def _float_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, Decimal):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _float_paths(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _float_paths(item, f"{path}[{index}]")


def _parse_list(
    data: Mapping[str, Any],
    key: str,
    message_type: type[M],
    check: Callable[[M, str], validate.Violations],
) -> tuple[list[M], list[str]]:
    parsed: list[M] = []
    problems: list[str] = []
    for index, raw in enumerate(data.get(key, [])):
        where = f"{key}[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            where += f" ({raw['id']})"
        if any(_float_paths(raw, "")):
            continue  # already reported, with its path
        message = message_type()
        try:
            json_format.ParseDict(raw, message)
        except json_format.ParseError as error:
            problems.append(f"{where}: {error}")
            continue
        violations = check(message, f"{key}[{index}]")
        problems += [f"{where}: {field}: {why}" for field, why in violations]
        parsed.append(message)
    return parsed, problems


def _check_model(model: catalog_pb2.Model, prefix: str) -> validate.Violations:
    violations = validate.model_violations(model, prefix)
    if model.endpoints:
        violations.append((f"{prefix}.endpoints", "list endpoints under the top-level key"))
    if model.HasField("update_time"):
        violations.append((f"{prefix}.update_time", "set by the catalog; leave it out"))
    return violations


def _check_endpoint(endpoint: catalog_pb2.Endpoint, prefix: str) -> validate.Violations:
    return validate.endpoint_violations(endpoint, prefix)


def _reference_problems(
    providers: list[catalog_pb2.Provider],
    models: list[catalog_pb2.Model],
    endpoints: list[catalog_pb2.Endpoint],
) -> list[str]:
    problems = _duplicate_problems("providers", [p.id for p in providers])
    problems += _duplicate_problems("models", [m.id for m in models])
    problems += _duplicate_problems(
        "endpoints", [validate.endpoint_id(e.provider_id, e.model_id) for e in endpoints]
    )
    provider_ids = {p.id for p in providers}
    model_ids = {m.id for m in models}
    for index, model in enumerate(models):
        if model.successor_model_id and model.successor_model_id not in model_ids:
            problems.append(
                f"models[{index}] ({model.id}): successor_model_id: no model"
                f" {model.successor_model_id!r} in the seed"
            )
    for index, endpoint in enumerate(endpoints):
        where = (
            f"endpoints[{index}] ({validate.endpoint_id(endpoint.provider_id, endpoint.model_id)})"
        )
        if endpoint.provider_id not in provider_ids:
            problems.append(
                f"{where}: provider_id: no provider {endpoint.provider_id!r} in the seed"
            )
        if endpoint.model_id not in model_ids:
            problems.append(f"{where}: model_id: no model {endpoint.model_id!r} in the seed")
    return problems


def _duplicate_problems(key: str, ids: list[str]) -> list[str]:
    seen: set[str] = set()
    problems: list[str] = []
    for index, entry_id in enumerate(ids):
        if entry_id in seen:
            problems.append(f"{key}[{index}] ({entry_id}): id: duplicate")
        seen.add(entry_id)
    return problems
