"""The router's local copy of the catalog, kept fresh by ``WatchCatalog``.

No catalog RPC is made on the request path: lookups read an immutable snapshot that a
background task swaps in whenever the catalog sends a new version. When the stream breaks the
task reconnects with capped backoff and the last snapshot keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import grpc

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard_core.money import Price
from switchboard_core.periodic import BackgroundTask

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint as the router needs it."""

    endpoint_id: str
    model_id: str
    provider_id: str
    api_format: int
    base_url: str
    dialect: str  # the provider's dialect, else its id
    upstream_model: str
    price: Price
    context_length: int
    max_completion_tokens: int
    supported_parameters: frozenset[str]
    input_modalities: frozenset[str] = frozenset({"text"})

    @property
    def price_key(self) -> Decimal:
        return self.price.prompt + self.price.completion


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    routes: Mapping[str, tuple[Route, ...]]  # model id -> active endpoints
    provider_ids: frozenset[str]

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(version=0, routes={}, provider_ids=frozenset())

    @classmethod
    def from_proto(cls, message: catalog_pb2.WatchCatalogResponse) -> Snapshot:
        providers = {p.id: p for p in message.providers}
        routes: dict[str, tuple[Route, ...]] = {}
        for model in message.models:
            found = []
            for e in model.endpoints:
                provider = providers.get(e.provider_id)
                if provider is None or e.status == catalog_pb2.ENDPOINT_STATUS_DISABLED:
                    continue
                found.append(
                    Route(
                        endpoint_id=e.id,
                        model_id=model.id,
                        provider_id=e.provider_id,
                        api_format=provider.api_format,
                        base_url=provider.base_url,
                        dialect=provider.dialect or provider.id,
                        upstream_model=e.upstream_model,
                        price=Price.parse(
                            e.pricing.prompt_usd_per_mtok,
                            e.pricing.completion_usd_per_mtok,
                            e.pricing.cached_prompt_usd_per_mtok,
                            e.pricing.cache_write_usd_per_mtok,
                        ),
                        context_length=e.context_length or model.context_length,
                        max_completion_tokens=e.max_completion_tokens,
                        supported_parameters=frozenset(e.supported_parameters),
                        input_modalities=frozenset(model.input_modalities or ("text",)),
                    )
                )
            routes[model.id] = tuple(found)
        return cls(version=message.version, routes=routes, provider_ids=frozenset(providers))


class CatalogCache(BackgroundTask):
    """The router's copy of the catalog, kept fresh by a WatchCatalog stream (the task)."""

    name = "catalog-watch"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self.snapshot = Snapshot.empty()
        self._loaded = asyncio.Event()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    async def wait_loaded(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), timeout)
        return self.loaded

    def apply(self, message: catalog_pb2.WatchCatalogResponse) -> None:
        try:
            snapshot = Snapshot.from_proto(message)
        except ValueError:
            log.exception("catalog snapshot rejected", extra={"version": message.version})
            return
        self.snapshot = snapshot
        self._loaded.set()
        log.info(
            "catalog snapshot loaded",
            extra={"version": snapshot.version, "models": len(snapshot.routes)},
        )

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                request = catalog_pb2.WatchCatalogRequest(known_version=self.snapshot.version)
                async for message in self._stub.WatchCatalog(request):
                    self.apply(message)
                    delay = 0.2
            except grpc.aio.AioRpcError as error:
                log.warning("catalog watch broke", extra={"grpc_code": error.code().name})
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
