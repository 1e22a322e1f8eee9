"""Which hedging a request gets, and how long its attempts wait before a hedge starts.

One resolver, three levels, the most specific winning (docs/ROUTING.md, "Hedged requests"):

1. the request's ``provider.hedge`` (:class:`~.canonical.ProviderPrefs`, parsed and checked by
   :mod:`.provider_prefs`);
2. the requested model's default, catalog ``Model.hedge`` (:attr:`.catalog_cache.Snapshot.hedges`);
3. the router's default, ``SWITCHBOARD_HEDGE_MODE`` / ``_DELAY_SECONDS`` / ``_PERCENTILE``
   (:class:`HedgeDefaults`).

A level that says ``MODE_UNSPECIFIED`` inherits the next; ``MODE_OFF`` stops there (a request
can turn off its model's hedging, and a model the router's). A live policy that sets no delay
takes the router's ``SWITCHBOARD_HEDGE_DELAY_SECONDS`` as the delay it uses until the endpoint
has figures. The fallback models of a request share the requested model's policy: one request,
one policy.

The delay of one attempt (:func:`hedge_delay`) is fixed, or the endpoint's live time to first
token at the policy's percentile (:mod:`.endpoint_stats`, across every router), falling back to
the fixed delay while the endpoint has too few measurements. With the p90, about one attempt in
ten draws a hedge when the endpoint behaves as it usually does, and nearly every one when it
slows down: which is when a hedge pays. The retry budget (:mod:`.retry_budget`) bounds the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from switchboard_router.canonical import NO_HEDGE, CompletionRequest, HedgePolicy
from switchboard_router.config import RouterConfig
from switchboard_router.endpoint_stats import LiveView
from switchboard_router.routing import split_variant

# The shortest delay a live figure may set (the request's and model's delays have the same
# floor, common.v1.Hedging.delay_ms): below it nearly every request would be sent twice.
MIN_DELAY_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class HedgeDefaults:
    """The router's own hedging (``policy``) and the delay a live policy without one uses."""

    policy: HedgePolicy = NO_HEDGE
    delay: float = 2.0

    @classmethod
    def of(cls, config: RouterConfig) -> HedgeDefaults:
        delay = config.hedge_delay_seconds
        policies = {
            "off": NO_HEDGE,
            "fixed": HedgePolicy(enabled=True, delay=delay),
            "live": HedgePolicy(enabled=True, delay=delay, percentile=config.hedge_percentile),
        }
        return cls(policies[config.hedge_mode], delay)


HEDGE_OFF = HedgeDefaults()


def resolve(
    request: CompletionRequest, models: Mapping[str, HedgePolicy], defaults: HedgeDefaults
) -> HedgePolicy:
    """The request's hedging: its own, else its model's (``models``: model id -> the catalog's
    default), else the router's."""
    policy = request.provider.hedge
    if policy is None:
        policy = models.get(split_variant(request.model)[0])
    if policy is None:
        policy = defaults.policy
    if policy.enabled and policy.delay <= 0:
        policy = dataclasses.replace(policy, delay=defaults.delay)
    return policy


def hedge_delay(policy: HedgePolicy, live: LiveView, endpoint_id: str) -> float | None:
    """How long an attempt on ``endpoint_id`` may go without its first event before a hedge
    starts; None when the policy does not hedge."""
    if not policy.enabled:
        return None
    delay = policy.delay
    if policy.percentile:
        figures = live.figures(endpoint_id)
        if figures is not None and figures.ttft is not None:
            delay = figures.ttft.at(policy.percentile)
    return max(MIN_DELAY_SECONDS, delay)
