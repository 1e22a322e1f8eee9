"""What an API key may use: its allow-lists of models and providers, enforced before anything
is sent upstream.

Metering keeps them with the key (``ApiKey.allowed_models``, ``allowed_providers``; empty
means any) and the router's :class:`~switchboard_router.auth.Caller` carries them.
:func:`allowed_plan` wraps :func:`~switchboard_router.routing.plan`:

- every model the request names (``model``, then each of ``fallback_models``) must be in
  ``allowed_models``, compared without its ``:floor``/``:nitro`` variant, else
  ``PERMISSION_DENIED`` with reason ``MODEL_NOT_ALLOWED`` naming the field and the rule. This
  is checked before the catalog lookup, so a key learns nothing from it about the catalog;
- the planned endpoints of providers not in ``allowed_providers`` are dropped (the others
  keep their order), and when none is left the request is refused with ``PERMISSION_DENIED``
  and reason ``PROVIDER_NOT_ALLOWED``.

The public model list (``RouterService.ListModels``) shows a key only what these rules let it
use. Pure functions: no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import PermissionDenied
from switchboard_router.canonical import CompletionRequest
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.endpoint_stats import NO_LIVE_VIEW, LiveView
from switchboard_router.routing import plan, split_variant


def _listed(values: Iterable[str]) -> frozenset[str] | None:
    found = frozenset(values)
    return found or None


@dataclass(frozen=True, slots=True)
class KeyRules:
    """A key's allow-lists; None means any."""

    models: frozenset[str] | None = None
    providers: frozenset[str] | None = None

    @classmethod
    def from_key(cls, key: metering_pb2.ApiKey) -> KeyRules:
        return cls(models=_listed(key.allowed_models), providers=_listed(key.allowed_providers))

    def allows_model(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    def allows_provider(self, provider_id: str) -> bool:
        return self.providers is None or provider_id in self.providers

    def check_models(self, request: CompletionRequest) -> None:
        """PERMISSION_DENIED (``MODEL_NOT_ALLOWED``) for the first model the key may not use."""
        if self.models is None:
            return
        fields = [("model", request.model)]
        fields += [(f"fallback_models[{i}]", m) for i, m in enumerate(request.fallback_models)]
        for field, name in fields:
            model, _variant = split_variant(name)
            if model not in self.models:
                allowed = ", ".join(sorted(self.models))
                raise PermissionDenied(
                    f"{field}: this API key may use only the models in its allowed_models"
                    f" ({allowed}); {model!r} is not one of them",
                    reason="MODEL_NOT_ALLOWED",
                    metadata={"field": field, "model": model, "rule": "allowed_models"},
                )

    def filter_routes(self, routes: list[Route], request: CompletionRequest) -> list[Route]:
        """``routes`` without those of providers the key may not use; PERMISSION_DENIED
        (``PROVIDER_NOT_ALLOWED``) when none is left."""
        if self.providers is None:
            return routes
        kept = [route for route in routes if route.provider_id in self.providers]
        if not kept:
            allowed = ", ".join(sorted(self.providers))
            offered = ", ".join(sorted({route.provider_id for route in routes}))
            raise PermissionDenied(
                f"this API key may use only the providers in its allowed_providers ({allowed});"
                f" the endpoints for {request.model!r} that match the request are served by"
                f" {offered}",
                reason="PROVIDER_NOT_ALLOWED",
                metadata={"model": request.model, "rule": "allowed_providers"},
            )
        return kept


def allowed_plan(
    rules: KeyRules,
    request: CompletionRequest,
    snapshot: Snapshot,
    live: LiveView = NO_LIVE_VIEW,
    rng: random.Random | None = None,
) -> list[Route]:
    """The endpoints to try, in order, among those the key may use (see the module doc).
    ``live`` and ``rng``: the live endpoint figures and the load balancer's randomness
    (:func:`~switchboard_router.routing.plan`). Dropping the providers a key may not use
    after the weighted draw leaves the others in the order a draw among them alone gives."""
    rules.check_models(request)
    return rules.filter_routes(plan(request, snapshot, live=live, rng=rng), request)
