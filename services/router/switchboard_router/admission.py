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

A hedged request (:mod:`.hedging`) may meter two attempts, the generation served and the
attempt that lost the race, each for what it consumed; the relay keeps at most two in flight,
so it reserves the sum of the two dearest routes' worst cases, and the relay settles to the
sum of both ledger rows.

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

Every Redis call here is bounded by the router's Redis deadline
(``SWITCHBOARD_REDIS_TIMEOUT_SECONDS``, retries included; :class:`RedisDeadline`): a limited
key is refused ``UNAVAILABLE``/``BUDGET_STORE_UNAVAILABLE`` with a retry delay within it when
Redis is unreachable or silent, at once while Redis is known to be down. A settle that cannot
reach Redis goes to the local spool (:mod:`.spool`) and releases its reservation seconds after
Redis answers again, rather than when it expires.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from redis import exceptions as redis_errors

from switchboard_core.budget import BudgetExceeded, BudgetStore, Limits, Reservation
from switchboard_core.errors import Unavailable
from switchboard_core.pricing import Counts, PriceSheet, Rates, Resolved
from switchboard_core.redis_client import RedisDeadline
from switchboard_router import metrics
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CACHE_1H,
    CACHE_5M,
    NO_HEDGE,
    CompletionRequest,
    HedgePolicy,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.usage_estimate import PromptSize, cache_marks

if TYPE_CHECKING:
    from switchboard_router.spool import Spool

log = logging.getLogger(__name__)

SPOOL_KIND = "settle"


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


def worst_case_cost(
    request: CompletionRequest, routes: list[Route], ceiling: int, *, hedged: bool = False
) -> Decimal:
    """The most the request can cost on any of ``routes``: what admission reserves. A
    ``hedged`` request may meter two attempts (the relay keeps at most two in flight): the
    sum of the two dearest routes' worst cases."""
    asks = _Asks.of(request)  # the prompt is read once, whatever the number of routes
    choices = request.n or 1  # each choice may use the whole bound
    costs = [
        worst_case_sheet(route.price, request, asks).cost(
            Counts(
                prompt_tokens=asks.prompt.reservation_tokens,
                completion_tokens=(
                    completion_bound(request, route, ceiling) + request.thinking_budget
                )
                * choices,
                input_images=asks.prompt.images,
            )
        )
        for route in routes
    ]
    if hedged:
        return sum(sorted(costs, reverse=True)[:2], Decimal(0))
    return max(costs, default=Decimal(0))


def _settle_body(reservation: Reservation, cost: Decimal) -> bytes:
    """A spooled settle: the reservation and its cost (kept for the record: a late settle
    counts nothing)."""
    fields = dataclasses.asdict(reservation)
    return json.dumps({**fields, "amount": str(reservation.amount), "cost": str(cost)}).encode()


def _open_settle(body: bytes) -> tuple[Reservation, Decimal]:
    fields = json.loads(body)
    cost = Decimal(fields.pop("cost"))
    fields.update(amount=Decimal(fields["amount"]), epochs=tuple(fields["epochs"]))
    return Reservation(**fields), cost


class Admission:
    def __init__(
        self,
        store: BudgetStore,
        ceiling_tokens: int,
        ttl_seconds: float,
        *,
        holder: str = "",
        deadline: RedisDeadline | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._store = store
        self._ceiling = ceiling_tokens
        self._ttl = ttl_seconds
        self._holder = holder  # this router's id: reservations name it
        self._deadline = deadline or RedisDeadline()
        self._spool = spool

    async def admit(
        self,
        caller: Caller,
        request: CompletionRequest,
        routes: list[Route],
        *,
        hedge: HedgePolicy = NO_HEDGE,
    ) -> Reservation | None:
        """Reserve the request's worst case; ``hedge``, the policy the relay will run it with
        (:func:`.hedging.resolve`): a hedged request reserves for two attempts."""
        limits: Limits = caller.limits
        if not limits.enforced:
            return None
        hedged = hedge.enabled and len(routes) > 1
        amount = worst_case_cost(request, routes, self._ceiling, hedged=hedged)
        try:
            reservation = await self._deadline.run(
                "reserve",
                lambda: self._store.reserve(
                    caller.key_id,
                    caller.account_id,
                    amount,
                    limits,
                    ttl_seconds=self._ttl,
                    holder=self._holder,
                ),
            )
        except BudgetExceeded as refused:
            metrics.BUDGET_ADMISSIONS.labels(refused.window).inc()
            raise
        except (redis_errors.RedisError, OSError):
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
        """Settle within the Redis deadline, else keep the settle in the spool, which applies
        it (late: :meth:`BudgetStore.settle`) once Redis answers. Runs in the background: the
        client is not kept waiting."""
        now = datetime.now(UTC)
        try:
            await self._deadline.run(
                "settle", lambda: self._store.settle(reservation, cost, now=now)
            )
            return
        except (redis_errors.RedisError, OSError) as error:
            cause = type(error).__name__
        if self._spool is not None:
            try:
                await self._spool.put(SPOOL_KIND, _settle_body(reservation, cost))
                return
            except (sqlite3.Error, OSError) as error:
                cause = type(error).__name__
        metrics.BUDGET_SETTLE_FAILURES.inc()
        # Metering's sweep settles the reservation when this router leaves or dies (it expires
        # by itself otherwise); the spend is in the ledger, and metering's resync raises the
        # Redis counters to it within a minute.
        log.warning(
            "reservation not settled", extra={"reservation": reservation.id, "error": cause}
        )

    async def deliver_spooled(self, body: bytes) -> bool:
        """Apply a spooled settle (:class:`.spool.Replayer`): releases the reservation if it
        is still held; whether it was or not, the entry is done once Redis answered."""
        reservation, cost = _open_settle(body)
        try:
            await self._deadline.run(
                "replay", lambda: self._store.settle(reservation, cost, late=True)
            )
        except (redis_errors.RedisError, OSError):
            return False
        return True
