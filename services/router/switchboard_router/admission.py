"""Admission against spend limits and prepaid credit, before anything is sent upstream.

A key with limits (or of a prepaid account) reserves the request's worst-case cost in Redis:
a generous prompt estimate (a token per three UTF-8 bytes) plus ``max_tokens`` (else the
endpoint's output cap, at most the configured ceiling) and any reasoning budget, for each of
the ``n`` choices, at the most expensive endpoint the plan may use, at the dearest rates that
endpoint's price sheet could apply to the request (:func:`worst_case_sheet`):

- **tiers**: every tier the prompt could reach. Which one it reaches is known only once the
  provider counts the prompt, so the bound is the most tokens the prompt could be (a token per
  UTF-8 byte, images at the most any provider charges, plus provider overhead:
  ``usage_estimate.prompt_tokens_bound``), not the estimate; a prompt near a threshold is
  reserved at the tier above it.
- **time windows**: the dearest of the base rates and every window, whatever the time: the
  generation's price is the one in force at its create_time, which comes after admission (a
  request admitted at 15:59 may start at 16:00).
- **per token type**: every prompt token at the dearest input rate the request can meet (the
  prompt rate; the image rate when it has images; the cache-write rate of each duration its
  parts ask to cache), every completion token at the dearest of the completion, reasoning and
  audio-output rates; plus the per-request fee and the per-image fee for each image. Web
  searches are not reserved: no request field asks for them.

A request whose
reservation does not fit is refused with ``RESOURCE_EXHAUSTED``
(``KEY_LIMIT_EXCEEDED`` or ``INSUFFICIENT_CREDIT``). A reserved request that sets no
``max_tokens`` is sent with the bound that was reserved, so its completion cannot cost more
than the reservation (the prompt is an estimate). The relay settles the reservation to the
actual cost when the generation ends, however it ends. A reservation names the router holding
it: when that router dies, metering's sweep settles it to the cost of the generation as last
seen (or to 0) within the heartbeat TTL plus the sweep interval, ~15 s
(:mod:`switchboard_core.liveness`); expiring after the longest a request may take is only the
fallback when nothing sweeps. Keys without limits skip all this: no Redis round trip on their
path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis import exceptions as redis_errors

from switchboard_core.budget import BudgetExceeded, BudgetStore, Limits, Reservation
from switchboard_core.errors import Unavailable
from switchboard_core.pricing import Counts, PriceSheet, Rates, Resolved
from switchboard_router import metrics
from switchboard_router.auth import Caller
from switchboard_router.canonical import CACHE_1H, CACHE_5M, CompletionRequest
from switchboard_router.catalog_cache import Route
from switchboard_router.usage_estimate import PromptSize, cache_marks

log = logging.getLogger(__name__)

# Pauses between settle attempts while Redis is unreachable: 12.7 s in all.
SETTLE_RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)


def completion_bound(request: CompletionRequest, route: Route, ceiling: int) -> int:
    """The completion tokens reserved for ``request`` on ``route``: its ``max_tokens``, else
    the endpoint's output cap, at most ``ceiling``."""
    return request.max_tokens or min(route.max_completion_tokens or ceiling, ceiling)


# A day: any time of it falls in the same window every day.
_MIDNIGHT = datetime(2000, 1, 1, tzinfo=UTC)


def _candidates(sheet: PriceSheet, prompt_bound: int) -> list[Resolved]:
    """The rates of every time window (and of none) at every tier up to the highest a prompt
    of at most ``prompt_bound`` tokens can reach."""
    prompts = [0] + [
        t.prompt_tokens_above + 1 for t in sheet.tiers if t.prompt_tokens_above < prompt_bound
    ]
    times: list[datetime | None] = [None]
    times += [_MIDNIGHT + timedelta(minutes=w.start) for w in sheet.windows]
    return [sheet.rates(prompt, at) for prompt in prompts for at in times]


@dataclass(frozen=True, slots=True)
class _Asks:
    """What of a request decides what it may cost (its prompt read once per request)."""

    prompt: PromptSize
    marks: frozenset[str]  # the cache durations its parts ask for

    @classmethod
    def of(cls, request: CompletionRequest) -> _Asks:
        return cls(PromptSize.of(request), cache_marks(request))


def worst_case_sheet(
    sheet: PriceSheet, request: CompletionRequest, asks: _Asks | None = None
) -> PriceSheet:
    """A flat sheet whose prompt and completion rates and fees are the dearest ``sheet`` could
    apply to ``request`` (see the module docstring)."""
    asks = asks or _Asks.of(request)
    candidates = _candidates(sheet, asks.prompt.tokens_bound)

    def dearest(*names: str) -> Decimal:
        values: list[Decimal] = [getattr(rates, name) for rates in candidates for name in names]
        return max(values)

    inputs = ["prompt"]
    inputs += ["image_prompt"] if asks.prompt.images else []
    inputs += ["cache_write"] if CACHE_5M in asks.marks else []
    inputs += ["cache_write_1h"] if CACHE_1H in asks.marks else []
    return PriceSheet(
        Rates(
            prompt=dearest(*inputs),
            completion=dearest("completion", "reasoning", "audio_completion"),
            request=dearest("request"),
            image=dearest("image"),
        )
    )


def worst_case_cost(request: CompletionRequest, routes: list[Route], ceiling: int) -> Decimal:
    """The most the request can cost on any of ``routes``: what admission reserves."""
    asks = _Asks.of(request)  # the prompt is read once, whatever the number of routes
    counts = Counts(
        prompt_tokens=asks.prompt.reservation_tokens,
        completion_tokens=0,
        input_images=asks.prompt.images,
    )
    choices = request.n or 1  # each choice may use the whole bound
    costs = [
        worst_case_sheet(route.price, request, asks).cost(
            dataclasses.replace(
                counts,
                completion_tokens=(
                    completion_bound(request, route, ceiling) + request.thinking_budget
                )
                * choices,
            )
        )
        for route in routes
    ]
    return max(costs, default=Decimal(0))


class Admission:
    def __init__(
        self,
        store: BudgetStore,
        ceiling_tokens: int,
        ttl_seconds: float,
        settle_retry_delays: tuple[float, ...] = SETTLE_RETRY_DELAYS,
        *,
        holder: str = "",
    ) -> None:
        self._store = store
        self._ceiling = ceiling_tokens
        self._ttl = ttl_seconds
        self._settle_retry_delays = settle_retry_delays
        self._holder = holder  # this router's id: reservations name it

    async def admit(
        self, caller: Caller, request: CompletionRequest, routes: list[Route]
    ) -> Reservation | None:
        limits: Limits = caller.limits
        if not limits.enforced:
            return None
        amount = worst_case_cost(request, routes, self._ceiling)
        try:
            reservation = await self._store.reserve(
                caller.key_id,
                caller.account_id,
                amount,
                limits,
                ttl_seconds=self._ttl,
                holder=self._holder,
            )
        except BudgetExceeded as refused:
            metrics.BUDGET_ADMISSIONS.labels(refused.window).inc()
            raise
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
            metrics.BUDGET_ADMISSIONS.labels("unavailable").inc()
            # Limits that cannot be checked are not waived.
            raise Unavailable(
                "cannot check the key's spend limits right now",
                reason="BUDGET_STORE_UNAVAILABLE",
                retry_after_seconds=1.0,
            ) from None
        metrics.BUDGET_ADMISSIONS.labels("admitted").inc()
        return reservation

    def bounded(self, request: CompletionRequest, route: Route) -> CompletionRequest:
        """``request`` as sent on ``route`` under a reservation: without ``max_tokens`` it
        gets the bound that was reserved, so the completion cannot cost more than that."""
        if request.max_tokens is not None:
            return request
        return dataclasses.replace(
            request, max_tokens=completion_bound(request, route, self._ceiling)
        )

    async def settle(self, reservation: Reservation, cost: Decimal) -> None:
        """Settle, retrying for about 12 s while Redis is unreachable (a settle counts once
        however often it runs). Runs in the background: the client is not kept waiting."""
        for delay in (*self._settle_retry_delays, None):
            try:
                await self._store.settle(reservation, cost)
                return
            except (redis_errors.RedisError, OSError):
                if delay is None:
                    break
                await asyncio.sleep(delay)
        metrics.BUDGET_SETTLE_FAILURES.inc()
        # Metering's sweep settles the reservation when this router leaves or dies (it expires
        # by itself otherwise); the spend is in the ledger, and metering's resync raises the
        # Redis counters to it within a minute.
        log.warning("reservation not settled", extra={"reservation": reservation.id})
