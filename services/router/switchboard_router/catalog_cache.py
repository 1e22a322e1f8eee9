"""The router's local copy of the catalog, kept fresh by ``WatchCatalog``.

No catalog RPC is made on the request path: lookups read an immutable snapshot that a
background task swaps in whenever the catalog sends a new version. When the stream breaks the
task reconnects with capped backoff and the last snapshot keeps serving (the watch loop is
:class:`switchboard_core.catalog_watch.CatalogWatch`, shared with metering).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import grpc

from switchboard.catalog.v1 import catalog_pb2
from switchboard_core.catalog_watch import CatalogWatch
from switchboard_core.money import Price

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
    # The catalog's models as it sent them, ordered by id: the public model list
    # (switchboard_router.account) is served from here. Never modified.
    models: tuple[catalog_pb2.Model, ...] = ()

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
        return cls(
            version=message.version,
            routes=routes,
            provider_ids=frozenset(providers),
            models=tuple(sorted(message.models, key=lambda model: model.id)),
        )


class CatalogCache(CatalogWatch):
    """The router's copy of the catalog, kept fresh by a WatchCatalog stream (the task)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.snapshot = Snapshot.empty()

    def known_version(self) -> int:
        """The version held: a reconnect sends no snapshot unless the catalog changed."""
        return self.snapshot.version

    def apply(self, message: catalog_pb2.WatchCatalogResponse) -> None:
        try:
            snapshot = Snapshot.from_proto(message)
        except ValueError:
            log.exception("catalog snapshot rejected", extra={"version": message.version})
            return
        self.snapshot = snapshot
        self._mark_loaded()
        log.info(
            "catalog snapshot loaded",
            extra={"version": snapshot.version, "models": len(snapshot.routes)},
        )
