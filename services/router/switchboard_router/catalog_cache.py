"""The router's local copy of the catalog, kept fresh by ``WatchCatalog``.

No catalog RPC is made on the request path: lookups read an immutable snapshot that a
background task swaps in whenever the catalog sends a new version. When the stream breaks the
task reconnects with capped backoff and the last snapshot keeps serving (the watch loop is
:class:`switchboard_core.catalog_watch.CatalogWatch`, shared with metering).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import grpc

from switchboard.catalog.v1 import catalog_pb2
from switchboard_core.catalog_watch import CatalogWatch
from switchboard_core.hedging import hedging_violations
from switchboard_core.pricing import PriceSheet, Resolved
from switchboard_router.canonical import HedgePolicy
from switchboard_router.lifecycle import (
    NO_LIFECYCLE,
    Lifecycle,
    model_retirement,
    next_change,
    now_utc,
    of_endpoint,
    of_model,
)
from switchboard_router.provider_prefs import hedge_policy
from switchboard_router.providers.base import DEFAULT_STALL, StallLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Capacity:
    """An endpoint's caps across all routers (catalog ``EndpointCapacity``); 0: no cap."""

    max_concurrent: int = 0
    requests_per_minute: int = 0

    @property
    def capped(self) -> bool:
        return bool(self.max_concurrent or self.requests_per_minute)


NO_CAPACITY = Capacity()


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
    price: PriceSheet  # the endpoint's whole price: every cost goes through PriceSheet.cost
    context_length: int
    max_completion_tokens: int
    supported_parameters: frozenset[str]
    input_modalities: frozenset[str] = frozenset({"text"})
    price_version: int = 0  # the catalog's id for ``price`` (0: unknown); stamped on events
    # Deprecation and retirement (the endpoint's own dates within its model's; lifecycle.py).
    lifecycle: Lifecycle = NO_LIFECYCLE
    # How long the endpoint's stream may be silent (:func:`stall_limits`), and the same for a
    # request that asks the model to think (the router's thinking defaults under the catalog's).
    stall: StallLimits = DEFAULT_STALL
    thinking_stall: StallLimits = DEFAULT_STALL
    # The operator's caps on the endpoint, shared by every router (catalog EndpointCapacity).
    capacity: Capacity = NO_CAPACITY
    # The catalog's Endpoint.quantization ("" when unknown) and DataPolicy.
    quantization: str = ""
    retains_prompts: bool = False
    zero_data_retention: bool = False
    # The rates of a short prompt outside any time window: what price filters and the
    # cheapest-first order compare. Resolved once, when the snapshot is built, not per request.
    base_rates: Resolved = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_rates", self.price.rates(0))

    @property
    def price_key(self) -> Decimal:
        return self.base_rates.prompt + self.base_rates.completion


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    routes: Mapping[str, tuple[Route, ...]]  # model id -> active endpoints
    provider_ids: frozenset[str]
    # The catalog's models as it sent them, ordered by id: the public model list
    # (switchboard_router.account) is served from here. Never modified.
    models: tuple[catalog_pb2.Model, ...] = ()
    # Model id -> its lifecycle as requests see it (lifecycle.model_retirement). ``routes``
    # leaves out endpoints retired when the snapshot was built; it is rebuilt at
    # ``fresh_until``, the next deprecation or retirement time (CatalogCache.snapshot).
    lifecycles: Mapping[str, Lifecycle] = field(default_factory=dict)
    fresh_until: datetime | None = None
    # Model id -> its default hedging (catalog Model.hedge), for the models that set one
    # (MODE_UNSPECIFIED inherits the router's: absent here). Resolved by hedging.resolve.
    hedges: Mapping[str, HedgePolicy] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(version=0, routes={}, provider_ids=frozenset())

    @classmethod
    def from_proto(
        cls,
        message: catalog_pb2.WatchCatalogResponse,
        now: datetime | None = None,
        stall: StallLimits = DEFAULT_STALL,
        thinking: StallLimits | None = None,
    ) -> Snapshot:
        """``stall``: the router's stall limits, for endpoints and models that set none;
        ``thinking``: the same for requests that ask the model to think (``stall`` if None)."""
        now = now or now_utc()
        thinking = stall if thinking is None else thinking
        providers = {p.id: p for p in message.providers}
        routes: dict[str, tuple[Route, ...]] = {}
        lifecycles: dict[str, Lifecycle] = {}
        hedges: dict[str, HedgePolicy] = {}
        every: list[Lifecycle] = []
        for model in message.models:
            found = []
            model_lifecycle = of_model(model)
            model_stall = stall_limits(stall, model.stall_limits)
            model_thinking = stall_limits(thinking, model.stall_limits)
            serving: list[Lifecycle] = []
            for e in model.endpoints:
                provider = providers.get(e.provider_id)
                if provider is None or e.status == catalog_pb2.ENDPOINT_STATUS_DISABLED:
                    continue
                lifecycle = of_endpoint(model_lifecycle, e)
                serving.append(lifecycle)
                if lifecycle.retired(now):
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
                        price=PriceSheet.from_proto(e.pricing),
                        price_version=e.price_version,
                        context_length=e.context_length or model.context_length,
                        max_completion_tokens=e.max_completion_tokens,
                        supported_parameters=frozenset(e.supported_parameters),
                        input_modalities=frozenset(model.input_modalities or ("text",)),
                        lifecycle=lifecycle,
                        stall=stall_limits(model_stall, e.stall_limits),
                        thinking_stall=stall_limits(model_thinking, e.stall_limits),
                        capacity=Capacity(
                            e.capacity.max_concurrent, e.capacity.requests_per_minute
                        ),
                        quantization=e.quantization,
                        retains_prompts=e.data_policy.retains_prompts,
                        zero_data_retention=e.data_policy.zero_data_retention,
                    )
                )
            routes[model.id] = tuple(found)
            lifecycles[model.id] = model_retirement(model_lifecycle, serving)
            every += [lifecycles[model.id], *serving]
            hedge = model_hedge(model)
            if hedge is not None:
                hedges[model.id] = hedge
        return cls(
            version=message.version,
            routes=routes,
            provider_ids=frozenset(providers),
            models=tuple(sorted(message.models, key=lambda model: model.id)),
            lifecycles=lifecycles,
            fresh_until=next_change(every, now),
            hedges=hedges,
        )


def model_hedge(model: catalog_pb2.Model) -> HedgePolicy | None:
    """The model's default hedging, None when it inherits the router's. The catalog checks
    a model's setting when it is written (switchboard_core.hedging); one that breaks the rules
    anyway (written before them, or by hand) is ignored, and said so, rather than applied."""
    problems = hedging_violations(model.hedge, "model.hedge")
    if problems:
        log.warning(
            "model hedging ignored",
            extra={"model": model.id, "field": problems[0][0], "problem": problems[0][1]},
        )
        return None
    return hedge_policy(model.hedge)


def stall_limits(inherited: StallLimits, limits: catalog_pb2.StallLimits) -> StallLimits:
    """``inherited`` with each limit the catalog sets (milliseconds, 0 = inherit) in its
    place: applied to the router's defaults with the model's, then with the endpoint's, the
    most specific wins."""
    if not limits.first_byte_ms and not limits.idle_ms:
        return inherited
    return StallLimits(
        limits.first_byte_ms / 1000 if limits.first_byte_ms else inherited.first_byte,
        limits.idle_ms / 1000 if limits.idle_ms else inherited.idle,
    )


class CatalogCache(CatalogWatch):
    """The router's copy of the catalog, kept fresh by a WatchCatalog stream (the task).
    ``stall`` and ``thinking``: the router's stall limits (for requests that ask the model to
    think: ``thinking``, else ``stall``), resolved into each route when a snapshot is built."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        stall: StallLimits = DEFAULT_STALL,
        thinking: StallLimits | None = None,
    ) -> None:
        super().__init__(channel)
        self._stall = stall
        self._thinking = thinking
        self._snapshot = Snapshot.empty()
        self._message: catalog_pb2.WatchCatalogResponse | None = None
        self.clock = now_utc

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot in force: rebuilt from the catalog's last message once a deprecation
        or retirement time has passed since it was built (retired endpoints then drop out)."""
        snapshot = self._snapshot
        if snapshot.fresh_until is not None and self._message is not None:
            now = self.clock()
            if now >= snapshot.fresh_until:
                self._snapshot = snapshot = Snapshot.from_proto(
                    self._message, now, self._stall, self._thinking
                )
        return snapshot

    @snapshot.setter
    def snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._message = None  # a snapshot set from outside is not rebuilt

    def known_version(self) -> int:
        """The version held: a reconnect sends no snapshot unless the catalog changed."""
        return self.snapshot.version

    def apply(self, message: catalog_pb2.WatchCatalogResponse) -> None:
        try:
            snapshot = Snapshot.from_proto(message, self.clock(), self._stall, self._thinking)
        except ValueError:
            log.exception("catalog snapshot rejected", extra={"version": message.version})
            return
        self.snapshot = snapshot
        self._message = message
        self._mark_loaded()
        log.info(
            "catalog snapshot loaded",
            extra={"version": snapshot.version, "models": len(snapshot.routes)},
        )
