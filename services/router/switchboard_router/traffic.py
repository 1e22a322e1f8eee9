"""Traffic control: a key's and its account's rate and concurrency limits, checked before the
spend reservation and before anything goes upstream (docs/LIMITS.md).

:meth:`TrafficControl.admit` checks every limit of the key and of its account in ONE script
call (:class:`switchboard_core.rate_limits.RateLimiter`; the algorithm is described there),
and returns a :class:`Ticket` the servicer finishes when the request ends. A caller without
rate limits costs nothing: no Redis round trip, no ticket.

**Tokens per minute** are charged at admission with the prompt's estimate, the one the spend
reservation uses (:func:`.usage_estimate.reservation_prompt_tokens`: a token per three UTF-8
bytes, 1,600 an image). It overcounts English (about four bytes a token) and is about right
for CJK text; so a burst of concurrent requests, whose real counts are not known until they
end, cannot pass the limit by undercounting, and the excess comes back when each ends
(:meth:`Ticket.finish` corrects the charge to the real prompt plus completion tokens). Only
the prompt is charged up front: the completion is counted at the end, when it is known. A
request that ends without the provider's final usage (cancelled, failed) keeps its estimate.

**Redis down or silent: the limits fail open.** A check bounded by the router's Redis deadline
(:class:`~switchboard_core.redis_client.RedisDeadline`, which also fails at once while Redis is
known to be down) that does not answer admits the request: availability first, since these
limits protect capacity, not money (the spend budgets, which do, stay fail-closed:
:mod:`.admission`). Each such admission is counted
(``switchboard_router_rate_limit_checks_total{outcome="unavailable"}``) and logged as a warning
at most every :data:`FAIL_OPEN_LOG_SECONDS`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

from redis import exceptions as redis_errors

from switchboard_core.rate_limits import LEASES, Limit, RateLimited, RateLimiter, Refusal
from switchboard_core.redis_client import RedisDeadline
from switchboard_router import metrics
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, UsageReport
from switchboard_router.leases import LeaseKeeper
from switchboard_router.usage_estimate import reservation_prompt_tokens

log = logging.getLogger(__name__)

# A fail-open warning is logged at most this often (per scope); the metric counts each one.
FAIL_OPEN_LOG_SECONDS = 10.0
# The retry hint of a full concurrency limit: nobody knows when a request in flight ends.
BUSY_RETRY_SECONDS = 1.0
# What finishing a request that sent nothing upstream means: no tokens used.
NOTHING_SENT = UsageReport(prompt_tokens=0, completion_tokens=0)
# How long closing waits for the releases still in flight.
DRAIN_SECONDS = 1.0

REDIS_TROUBLE = (redis_errors.RedisError, OSError)


def new_lease() -> str:
    return "l" + secrets.token_hex(8)


class FailOpen:
    """What happens when a ``scope``'s check cannot reach Redis: counted every time, logged
    at most every ``every`` seconds (a Redis outage under load would otherwise log per
    request)."""

    def __init__(self, scope: str, every: float = FAIL_OPEN_LOG_SECONDS) -> None:
        self._scope = scope
        self._every = every
        self._logged_at = -every
        self._unlogged = 0

    def __call__(self, error: BaseException) -> None:
        metrics.RATE_LIMIT_CHECKS.labels(self._scope, "unavailable").inc()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at < self._every:
            return
        log.warning(
            "rate limits not checked (Redis unavailable): admitted, failing open",
            extra={"scope": self._scope, "error": type(error).__name__, "count": self._unlogged},
        )
        self._logged_at, self._unlogged = now, 0


class Background:
    """Redis calls made after the client has its answer (releases, corrections): each within
    the Redis deadline, never raising; :meth:`drain` waits for them on close."""

    def __init__(self, deadline: RedisDeadline) -> None:
        self._deadline = deadline
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self, operation: str, call: Callable[[], Awaitable[object]]) -> None:
        async def bounded() -> None:
            try:
                await self._deadline.run(operation, call)
            except REDIS_TROUBLE as error:  # counted by the deadline; leases expire by themselves
                log.debug("%s failed", operation, extra={"error": type(error).__name__})
            except Exception:
                log.exception("%s failed", operation)

        task = asyncio.create_task(bounded(), name=operation)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = DRAIN_SECONDS) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


class Checked(enum.Enum):
    """How a check that refused nothing ended."""

    ADMITTED = "admitted"  # charged, its lease held (and renewed)
    FAILED_OPEN = "failed_open"  # Redis could not be asked: let through, nothing held


class LimitCheck:
    """One all-or-nothing check of a request's limits in Redis
    (:meth:`~switchboard_core.rate_limits.RateLimiter.acquire`), as a caller's rate limits and
    an endpoint's caps are both checked: within the router's Redis deadline; failing open when
    Redis cannot answer (counted and logged under ``scope``); the lease given back when the
    check is cut short (the script may have run); the lease held, and renewed, once admitted.
    Every outcome is counted in ``switchboard_router_rate_limit_checks_total{scope}``."""

    def __init__(
        self,
        scope: str,
        limiter: RateLimiter,
        leases: LeaseKeeper,
        deadline: RedisDeadline,
        background: Background,
        *,
        busy_retry: float,
    ) -> None:
        self._scope = scope
        self._limiter = limiter
        self._leases = leases
        self._deadline = deadline
        self._background = background
        self._busy_retry = busy_retry  # the retry hint of a full concurrency limit
        self._fail_open = FailOpen(scope)

    async def run(
        self, operation: str, limits: Sequence[Limit], lease: str, release: str
    ) -> Refusal | Checked:
        """The refusal (counted), or how an admission went; ``operation`` and ``release``
        name the check and the background give-back in the Redis failure counts."""
        try:
            refusal = await self._deadline.run(
                operation,
                lambda: self._limiter.acquire(
                    limits, lease, self._leases.lease_seconds, busy_retry=self._busy_retry
                ),
            )
        except REDIS_TROUBLE as error:
            self._fail_open(error)
            return Checked.FAILED_OPEN
        except asyncio.CancelledError:  # the script may have run: give the lease back
            if lease:
                self._background.run(release, lambda: self._limiter.finish(lease, limits))
            raise
        if refusal is not None:
            self.refused(refusal)
            return refusal
        metrics.RATE_LIMIT_CHECKS.labels(self._scope, "admitted").inc()
        if lease:
            self._leases.hold(lease, [limit.key for limit in limits if limit.kind == LEASES])
        return Checked.ADMITTED

    def refused(self, refusal: Refusal) -> None:
        metrics.RATE_LIMIT_CHECKS.labels(self._scope, "refused").inc()
        metrics.RATE_LIMITED.labels(refusal.limit.name).inc()


class Ticket:
    """An admitted request's hold on its limits, given back by :meth:`finish`."""

    __slots__ = ("_control", "_done", "lease", "limits")

    def __init__(self, control: TrafficControl, limits: Sequence[Limit], lease: str) -> None:
        self._control = control
        self._done = False
        self.limits = tuple(limits)
        self.lease = lease  # "" when no concurrency limit applies

    def finish(self, usage: UsageReport | None) -> None:
        """Release the concurrency leases and correct the tokens per minute to ``usage``'s
        real counts (None: the estimate stands), in the background. Never raises, never
        blocks; a second call does nothing."""
        if self._done:
            return
        self._done = True
        self._control.finish(self, usage)


class TrafficControl:
    def __init__(self, limiter: RateLimiter, leases: LeaseKeeper, deadline: RedisDeadline) -> None:
        self._limiter = limiter
        self._leases = leases
        self._background = Background(deadline)
        self._check = LimitCheck(
            "caller", limiter, leases, deadline, self._background, busy_retry=BUSY_RETRY_SECONDS
        )

    async def admit(self, caller: Caller, request: CompletionRequest) -> Ticket | None:
        """Charge the caller's limits, or raise :class:`RateLimited` (RESOURCE_EXHAUSTED,
        reason ``RATE_LIMITED``, naming the limit, with RetryInfo unless the request can never
        fit). None when the caller has no rate limits, or Redis could not be asked (fail
        open)."""
        key, account = caller.rate_limits, caller.account_rate_limits
        if not (key.enforced or account.enforced):
            return None
        tokens = 0
        if key.tokens_per_minute or account.tokens_per_minute:
            tokens = reservation_prompt_tokens(request)
        limits = self._limiter.caller_limits(caller.key_id, caller.account_id, key, account, tokens)
        for limit in limits:
            if limit.never:  # refused whether Redis answers or not: no wait would help
                refusal = Refusal(limit, None)
                self._check.refused(refusal)
                raise RateLimited(refusal)
        lease = new_lease() if any(limit.kind == LEASES for limit in limits) else ""
        checked = await self._check.run("rate_check", limits, lease, "rate_finish")
        if isinstance(checked, Refusal):
            raise RateLimited(checked)
        if checked is Checked.FAILED_OPEN:
            return None
        return Ticket(self, limits, lease)

    def finish(self, ticket: Ticket, usage: UsageReport | None) -> None:
        """:meth:`Ticket.finish`'s work: a Redis call only when there is a lease to release or
        a tokens-per-minute charge to correct."""
        lease, limits = ticket.lease, ticket.limits
        if lease:
            self._leases.drop(lease)
        real = None if usage is None else usage.prompt_tokens + usage.completion_tokens
        corrects = real is not None and any(
            limit.name.endswith(".tokens_per_minute") and limit.cost != real for limit in limits
        )
        if lease or corrects:
            self._background.run("rate_finish", lambda: self._limiter.finish(lease, limits, real))

    async def drain(self) -> None:
        """Wait (briefly) for the releases and corrections still in flight."""
        await self._background.drain()
