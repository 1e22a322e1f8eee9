"""``switchboard catalog check``: endpoints whose upstream model the provider no longer lists.

For every provider serving an endpoint that is active and not retired (``switchboard_router.
lifecycle``), the provider's own model list is asked for
(``switchboard_router.providers.model_lists``: OpenAI-compatible ``GET /models``, Anthropic's
and Gemini's paged lists), with the provider's key as the router reads it
(``SWITCHBOARD_PROVIDER_KEY_<ID>``, sent only to the provider's declared hosts,
``SWITCHBOARD_PROVIDER_HOSTS_<ID>``) and under the router's upstream address policy
(``SWITCHBOARD_UPSTREAM_ALLOWLIST``): run it where the router's environment is. The report
names each endpoint whose ``upstream_model`` the provider did not list, and each provider that
could not be asked (with why: no key, undeclared host, refused address, HTTP error, timeout).
Keys never appear in it. Every listing is bounded (pages, ids, ``--timeout`` seconds).

Exit status: 0 when every endpoint was found, 1 when something is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import grpc

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.output import Output
from switchboard_cli.paging import PAGE_SIZE, collect
from switchboard_core.config import EnvReader, Secret
from switchboard_core.errors import SwitchboardError
from switchboard_core.upstreams import UpstreamPolicy, read_upstream_policy
from switchboard_router.config import PROVIDER_KEY_PREFIX, read_provider_hosts
from switchboard_router.lifecycle import now_utc, of_endpoint, of_model
from switchboard_router.providers.credentials import (
    ProviderCredentials,
    Withheld,
    env_name,
    hosts_variable,
)
from switchboard_router.providers.http import create_session
from switchboard_router.providers.model_lists import (
    LIST_TIMEOUT_SECONDS,
    MAX_PAGES,
    ModelList,
    list_models,
)
from switchboard_router.providers.registry import build_adapters

# Providers asked at once.
CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class MissingEndpoint:
    """An endpoint whose upstream model its provider does not list."""

    endpoint_id: str
    model_id: str
    provider_id: str
    upstream_model: str


@dataclass(frozen=True, slots=True)
class ProviderCheck:
    provider_id: str
    endpoints: int  # endpoints checked against the list
    listed: int = 0  # ids the provider listed
    complete: bool = True  # False: the listing was cut by its bounds (missing ids unsure)
    reason: str = ""  # why the provider could not be asked ("" when it was)
    problem: str = ""

    @property
    def reached(self) -> bool:
        return not self.reason


@dataclass(frozen=True, slots=True)
class CatalogReport:
    missing: tuple[MissingEndpoint, ...]
    providers: tuple[ProviderCheck, ...]

    @property
    def unreachable(self) -> tuple[ProviderCheck, ...]:
        return tuple(p for p in self.providers if not p.reached)

    @property
    def clean(self) -> bool:
        return not self.missing and not self.unreachable

    def to_dict(self) -> dict[str, Any]:
        return {
            "missing": [
                {
                    "endpoint_id": m.endpoint_id,
                    "model_id": m.model_id,
                    "provider_id": m.provider_id,
                    "upstream_model": m.upstream_model,
                }
                for m in self.missing
            ],
            "providers": [
                {
                    "provider_id": p.provider_id,
                    "endpoints": p.endpoints,
                    "listed": p.listed,
                    "complete": p.complete,
                    "reached": p.reached,
                    "reason": p.reason,
                    "problem": p.problem,
                }
                for p in self.providers
            ],
        }


@dataclass(frozen=True)
class DiscoveryConfig:
    """What the router's environment says about reaching providers."""

    keys: Mapping[str, Secret]
    hosts: Mapping[str, tuple[str, ...]]
    policy: UpstreamPolicy

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DiscoveryConfig:
        """Read as the router reads them (``switchboard_router.config``); every problem at
        once (``ConfigError``)."""
        reader = EnvReader(env)
        config = cls(
            keys=reader.prefixed(PROVIDER_KEY_PREFIX),
            hosts=read_provider_hosts(reader),
            policy=read_upstream_policy(reader),
        )
        reader.finish()
        return config


def checked_endpoints(
    models: Sequence[catalog_pb2.Model], now: datetime
) -> dict[str, list[tuple[catalog_pb2.Model, catalog_pb2.Endpoint]]]:
    """Provider id -> its endpoints that are active and not retired at ``now``."""
    found: dict[str, list[tuple[catalog_pb2.Model, catalog_pb2.Endpoint]]] = {}
    for model in models:
        lifecycle = of_model(model)
        for endpoint in model.endpoints:
            if endpoint.status == catalog_pb2.ENDPOINT_STATUS_DISABLED:
                continue
            if of_endpoint(lifecycle, endpoint).retired(now):
                continue
            found.setdefault(endpoint.provider_id, []).append((model, endpoint))
    return found


def _withheld_problem(withheld: Withheld) -> tuple[str, str]:
    if withheld.reason == "host_not_declared":
        return (
            "PROVIDER_HOST_NOT_DECLARED",
            f"{withheld.host} is not one of the provider's declared hosts; set"
            f" {hosts_variable(withheld.provider_id)} to send its key there",
        )
    return (
        "PROVIDER_NOT_CONFIGURED",
        f"no key: set {PROVIDER_KEY_PREFIX}{env_name(withheld.provider_id)}",
    )


def _scrub(text: str, key: Secret) -> str:
    """``text`` with the key taken out, should a provider echo it."""
    secret = key.reveal()
    return text.replace(secret, "[redacted]") if len(secret) >= 4 else text


async def _check_provider(
    provider: catalog_pb2.Provider,
    endpoints: list[tuple[catalog_pb2.Model, catalog_pb2.Endpoint]],
    session: aiohttp.ClientSession,
    credentials: ProviderCredentials,
    timeout: float,
    max_pages: int,
) -> tuple[ProviderCheck, list[MissingEndpoint]]:
    dialect = provider.dialect or provider.id
    adapter = build_adapters(session).get(provider.api_format)
    required = adapter.requires_credential(dialect) if adapter is not None else True
    key = credentials.lookup(provider.id, provider.base_url, required=required)
    if isinstance(key, Withheld):
        reason, problem = _withheld_problem(key)
        return ProviderCheck(provider.id, len(endpoints), reason=reason, problem=problem), []
    try:
        listed: ModelList = await list_models(
            session,
            provider.api_format,
            provider.base_url,
            key,
            provider=provider.id,
            dialect=dialect,
            timeout=timeout,
            max_pages=max_pages,
        )
    except SwitchboardError as error:
        check = ProviderCheck(
            provider.id, len(endpoints), reason=error.reason, problem=_scrub(error.message, key)
        )
        return check, []
    missing = [
        MissingEndpoint(endpoint.id, model.id, provider.id, endpoint.upstream_model)
        for model, endpoint in endpoints
        if listed.complete and not listed.serves(endpoint.upstream_model)
    ]
    check = ProviderCheck(provider.id, len(endpoints), len(listed.ids), listed.complete)
    return check, missing


async def check_catalog(
    providers: Sequence[catalog_pb2.Provider],
    models: Sequence[catalog_pb2.Model],
    *,
    session: aiohttp.ClientSession,
    credentials: ProviderCredentials,
    now: datetime | None = None,
    timeout: float = LIST_TIMEOUT_SECONDS,
    max_pages: int = MAX_PAGES,
    only: frozenset[str] = frozenset(),
) -> CatalogReport:
    """Compare the catalog's live endpoints with what their providers list (module doc).
    ``only``: just these provider ids (empty: every provider with endpoints to check)."""
    wanted = checked_endpoints(models, now or now_utc())
    by_id = {p.id: p for p in providers}
    gate = asyncio.Semaphore(CONCURRENCY)
    checks: list[ProviderCheck] = []
    missing: list[MissingEndpoint] = []

    async def one(provider_id: str) -> None:
        endpoints = wanted[provider_id]
        provider = by_id.get(provider_id)
        if provider is None:
            problem = "the catalog has endpoints for this provider but no provider record"
            checks.append(
                ProviderCheck(
                    provider_id, len(endpoints), reason="UNKNOWN_PROVIDER", problem=problem
                )
            )
            return
        async with gate:
            check, gone = await _check_provider(
                provider, endpoints, session, credentials, timeout, max_pages
            )
        checks.append(check)
        missing.extend(gone)

    async with asyncio.TaskGroup() as group:
        for provider_id in sorted(wanted):
            if not only or provider_id in only:
                group.create_task(one(provider_id))
    return CatalogReport(
        missing=tuple(sorted(missing, key=lambda m: (m.provider_id, m.endpoint_id))),
        providers=tuple(sorted(checks, key=lambda c: c.provider_id)),
    )


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``check`` to the ``catalog`` command's actions."""
    check = commands.add_parser(
        "check",
        parents=[common],
        help="report endpoints whose upstream model the provider no longer lists",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    check.add_argument(
        "--provider", action="append", default=[], help="only this provider (repeatable)"
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=LIST_TIMEOUT_SECONDS,
        help=f"seconds to wait for each provider's list (default {LIST_TIMEOUT_SECONDS:g})",
    )
    check.set_defaults(handler=run_check, service="catalog")


async def _catalog(
    channel: grpc.aio.Channel,
) -> tuple[Sequence[catalog_pb2.Provider], list[catalog_pb2.Model]]:
    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    providers = await stub.ListProviders(catalog_pb2.ListProvidersRequest(), timeout=UNARY_TIMEOUT)

    async def page(token: str) -> tuple[Sequence[catalog_pb2.Model], str]:
        request = catalog_pb2.ListModelsRequest(page_size=PAGE_SIZE, page_token=token)
        reply = await stub.ListModels(request, timeout=UNARY_TIMEOUT)
        return reply.models, reply.next_page_token

    return providers.providers, await collect(page)


async def run_check(
    args: argparse.Namespace,
    channel: grpc.aio.Channel,
    output: Output,
    env: Mapping[str, str] | None = None,
) -> int:
    """The ``check`` handler: the catalog from ``channel``, keys from ``env`` (the process's
    environment by default)."""
    config = DiscoveryConfig.from_env(os.environ if env is None else env)
    providers, models = await _catalog(channel)
    credentials = ProviderCredentials(config.keys, config.hosts)
    async with create_session(config.policy) as session:
        report = await check_catalog(
            providers,
            models,
            session=session,
            credentials=credentials,
            timeout=args.timeout,
            only=frozenset(args.provider),
        )
    show_report(report, output)
    return 0 if report.clean else 1


def show_report(report: CatalogReport, output: Output) -> None:
    if output.json:
        output.emit(report.to_dict())
        return
    if report.missing:
        output.line("Endpoints whose upstream model the provider no longer lists:")
        rows = [[m.provider_id, m.endpoint_id, m.upstream_model] for m in report.missing]
        output.table(["PROVIDER", "ENDPOINT", "UPSTREAM MODEL"], rows)
        output.line()
    rows = []
    for p in report.providers:
        if not p.reached:
            status = f"not reached: {p.reason}: {p.problem}"
        elif not p.complete:
            status = "listing cut short (missing models not reported)"
        else:
            status = "ok"
        rows.append([p.provider_id, str(p.endpoints), str(p.listed) if p.reached else "-", status])
    if rows:
        output.table(["PROVIDER", "ENDPOINTS", "LISTED", "STATUS"], rows, numeric={1, 2})
    else:
        output.note("no active endpoints to check")
