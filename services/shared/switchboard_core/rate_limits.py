"""Traffic limits (requests per minute, tokens per minute, concurrent requests) of a key, an
account or an upstream endpoint, as the routers enforce them together in Redis.

The dataclass :class:`RateLimits` is shared by metering (storage, admin API), the router's
traffic control (:mod:`switchboard_router.traffic`) and its endpoint gate
(:mod:`switchboard_router.capacity`); :class:`RateLimiter` is the Redis side of both.

**Rates: GCRA** (the generic cell rate algorithm, as ATM networks and Stripe, GitHub and
``redis-cell`` use it). A limit of N a minute has an emission interval T = 60/N s and a burst
of a minute's worth (N at once). Its whole state is ONE number in ONE key: the theoretical
arrival time (TAT), when the limit would be back to empty. A request costing c (1 for requests,
its tokens for tokens per minute) is admitted when ``max(TAT, now) + c*T - 60 s <= now`` and
moves TAT there; otherwise it is told to retry when that holds. So a fresh limit admits
exactly N at once, then exactly one every T. It is exact and O(1) in time and memory, where a
sliding-window log keeps a sorted-set member per request (N members per key, a ZADD and a
trim per check) and a sliding-window counter is approximate at the window's edge. A request
whose cost alone is more than the burst (more tokens than the limit per minute) can never be
admitted: it is refused as such (:class:`RateLimited` with ``never``), without asking Redis.
Tokens are charged at admission by the prompt's estimate and corrected when the generation
ends (:meth:`RateLimiter.finish`): the difference with the real usage moves TAT (a refund
never below now: time that passed cannot be given back).

**Concurrency: leases.** Each limit is a sorted set of lease ids scored by their expiry. An
admission first drops the expired ones, then adds its lease if fewer than the limit are
held; the holder renews its leases every third of the lease time
(:class:`switchboard_router.leases.LeaseKeeper`) and removes them when the request ends. A
router that dies stops renewing: its slots come free within the lease time
(``SWITCHBOARD_CONCURRENCY_LEASE_SECONDS``), with no sweep.

**One check, one round trip, all or nothing.** Every limit of one request (its key's and its
account's, or an endpoint's two) is checked by one script (:data:`ADMIT`, one EVALSHA): if any
limit refuses, nothing is charged, and the refusal names every limit that refused. A key's
and its account's keys share the hash tag ``{<account id>}``, an endpoint's ``{ep:<endpoint
id>}``, so each script touches one cluster slot.

**The clock is Redis's** (``TIME`` inside the scripts): every router charges against the same
clock, so routers whose clocks drift apart neither gain nor lose burst between them, and the
leases' expiries agree with whoever reads them. Tests pass their own clock
(``RateLimiter(clock=...)``) to drive time deterministically.

Layout, under the routers' budget prefix (``switchboard:budget:``):

- ``rl:{<account id>}:key:<key id>:rpm`` / ``:tpm``: a key's GCRA states (microseconds since
  the epoch, kept only while ahead of now);
- ``rl:{<account id>}:key:<key id>:conc``: a key's leases (sorted set, scored by expiry in
  microseconds; expires with its latest lease);
- ``rl:{<account id>}:acct:rpm`` / ``:tpm`` / ``:conc``: the same for the account;
- ``rl:{ep:<endpoint id>}:rpm`` / ``:conc``: an endpoint's capacity caps.

The scripts are in :mod:`switchboard_core.rate_limit_scripts`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import ResourceExhausted
from switchboard_core.rate_limit_scripts import ADMIT, FINISH, RENEW

MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_TOKENS_PER_MINUTE = 10_000_000_000
MAX_CONCURRENT = 100_000


@dataclass(frozen=True, slots=True)
class RateLimits:
    """0 means no limit."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0

    @property
    def enforced(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_concurrent)

    @classmethod
    def from_proto(cls, limits: metering_pb2.RateLimits) -> RateLimits:
        return cls(limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent)

    def to_proto(self) -> metering_pb2.RateLimits:
        return metering_pb2.RateLimits(
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent=self.max_concurrent,
        )


NO_RATE_LIMITS = RateLimits()


# -- Enforcement in Redis (see the module doc) ---------------------------------------------

DEFAULT_PREFIX = "switchboard:budget:"  # the routers' budget prefix (RouterConfig.budget_prefix)
WINDOW_US = 60_000_000  # the burst: a minute's worth
RATE, LEASES = "g", "c"  # the kinds of limit the admit script knows
# What each part of a limit's name reads as in a refusal.
_WHOSE = {"key": "the key's", "account": "the account's", "endpoint": "the endpoint's"}
_WHAT = {
    "requests_per_minute": "requests per minute",
    "tokens_per_minute": "tokens per minute",
    "max_concurrent": "concurrent requests",
}


def increment_us(cost: int, per_minute: int) -> int:
    """What ``cost`` moves a GCRA state of ``per_minute`` forward: ``cost`` emission
    intervals of 60/N s, in whole microseconds rounded up (exact integers: never less than
    the limit allows, at most a microsecond more per request)."""
    return -(-cost * WINDOW_US // per_minute)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit as a request meets it: ``name`` as the client reads it
    (``key.requests_per_minute``, ``account.max_concurrent``, ``endpoint.max_concurrent``),
    the Redis key of its state, its value, and the request's cost against it (1 request, or
    the prompt's estimated tokens; none for leases)."""

    name: str
    key: str
    value: int
    kind: str = RATE
    cost: int = 1

    @property
    def never(self) -> bool:
        """The cost alone is more than a minute's worth: no wait can admit it."""
        return self.kind == RATE and self.cost > self.value


@dataclass(frozen=True, slots=True)
class Refusal:
    """The limit that refused a request and when to retry (seconds; None: never)."""

    limit: Limit
    retry_after: float | None


class RateLimited(ResourceExhausted):
    """A rate or concurrency limit refused the request: nothing was charged, nothing sent."""

    reason = "RATE_LIMITED"

    def __init__(self, refusal: Refusal) -> None:
        limit = refusal.limit
        whose, _, what = limit.name.partition(".")
        said = f"{_WHOSE[whose]} {_WHAT[what]} ({limit.value:,})"
        metadata = {"limit": limit.name, "limit_value": str(limit.value)}
        if refusal.retry_after is None:
            message = (
                f"request too large for {said}: its prompt is estimated at {limit.cost:,} "
                "tokens, so it can never be admitted; shorten it or ask for a higher limit"
            )
            metadata["requested_tokens"] = str(limit.cost)
        else:
            message = f"rate limit reached: {said}; retry in {refusal.retry_after:.2f} s"
        super().__init__(message, metadata=metadata, retry_after_seconds=refusal.retry_after)
        self.refusal = refusal


class RateLimiter:
    """The limits' state in Redis: one script call per admission, per release (with the
    tokens' correction) and per lease renewal of a slot."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._clock = clock  # microseconds since the epoch; None: Redis's TIME (production)
        self._admit = client.register_script(ADMIT)
        self._finish = client.register_script(FINISH)

    def _now(self) -> str:
        return "" if self._clock is None else str(self._clock())

    def caller_limits(
        self, key_id: str, account_id: str, key: RateLimits, account: RateLimits, tokens: int
    ) -> list[Limit]:
        """The limits a request of ``key_id`` meets, costing ``tokens`` (the prompt's
        estimate) against the tokens per minute; those set to 0 are left out."""
        tag = f"{self._prefix}rl:{{{account_id}}}:"
        return [
            *_limits(f"{tag}key:{key_id}:", "key", key, tokens),
            *_limits(f"{tag}acct:", "account", account, tokens),
        ]

    def endpoint_limits(
        self, endpoint_id: str, max_concurrent: int, requests_per_minute: int
    ) -> list[Limit]:
        caps = RateLimits(requests_per_minute=requests_per_minute, max_concurrent=max_concurrent)
        return _limits(f"{self._prefix}rl:{{ep:{endpoint_id}}}:", "endpoint", caps, 0)

    async def acquire(
        self,
        limits: Sequence[Limit],
        lease: str = "",
        lease_seconds: float = 30.0,
        *,
        busy_retry: float = 1.0,
    ) -> Refusal | None:
        """Charge every limit, or none: None when admitted (holding ``lease`` in each
        concurrency limit), else the refusal that waits longest. ``busy_retry`` is the retry
        hint for a full concurrency limit (nobody knows when a holder finishes). A request too
        large for a limit is refused without asking Redis."""
        for limit in limits:
            if limit.never:
                return Refusal(limit, None)
        args: list[str | int] = [self._now(), lease, int(lease_seconds * 1_000_000)]
        for limit in limits:
            amount = increment_us(limit.cost, limit.value) if limit.kind == RATE else limit.value
            args += [limit.kind, amount]
        reply = await self._admit(keys=[limit.key for limit in limits], args=args)
        if int(reply[0]):
            return None
        refusals = [
            Refusal(limits[int(i) - 1], busy_retry if int(wait) < 0 else int(wait) / 1e6)
            for i, wait in zip(reply[1::2], reply[2::2], strict=True)
        ]
        return max(refusals, key=lambda r: r.retry_after or 0.0)

    async def finish(
        self, lease: str, limits: Sequence[Limit], real_tokens: int | None = None
    ) -> None:
        """Release ``lease`` from the concurrency limits among ``limits`` and, when
        ``real_tokens`` is known, correct each tokens-per-minute limit from the estimate it
        was charged to the real count."""
        held = [limit.key for limit in limits if lease and limit.kind == LEASES]
        corrected = [
            (
                limit.key,
                increment_us(real_tokens, limit.value) - increment_us(limit.cost, limit.value),
            )
            for limit in limits
            if real_tokens is not None and limit.name.endswith(".tokens_per_minute")
        ]
        corrected = [(key, delta) for key, delta in corrected if delta]
        if not held and not corrected:
            return
        await self._finish(
            keys=[*held, *(key for key, _ in corrected)],
            args=[self._now(), lease, len(held), *(delta for _, delta in corrected)],
        )

    async def renew(self, leases: Mapping[str, Sequence[str]], lease_seconds: float) -> int:
        """Push each held lease's expiry (lease id: its sets' keys) to now + the lease time,
        in ONE pipeline (a script per lease: its sets share a slot); returns how many sets
        still held theirs."""
        if not leases:
            return 0
        # EVAL, not the registered script's EVALSHA: redis-py's cluster pipeline refuses
        # EVALSHA (it cannot load a script on a node mid-pipeline); Redis caches the body.
        pipe = self._redis.pipeline(transaction=False)
        now, micros = self._now(), int(lease_seconds * 1_000_000)
        for lease, keys in leases.items():
            pipe.eval(RENEW, len(keys), *keys, now, lease, micros)
        return sum(int(held) for held in await pipe.execute())


def _limits(base: str, whose: str, limits: RateLimits, tokens: int) -> list[Limit]:
    found = []
    if limits.requests_per_minute:
        found.append(
            Limit(f"{whose}.requests_per_minute", base + "rpm", limits.requests_per_minute)
        )
    if limits.tokens_per_minute:
        found.append(
            Limit(f"{whose}.tokens_per_minute", base + "tpm", limits.tokens_per_minute, cost=tokens)
        )
    if limits.max_concurrent:
        found.append(Limit(f"{whose}.max_concurrent", base + "conc", limits.max_concurrent, LEASES))
    return found


# -- Bounds of the admin API (metering's SetKeyLimits and SetAccountLimits, and the router's
# check of what metering sends). Kept here with the MAX_* values they enforce.
_BOUNDS = (
    ("requests_per_minute", MAX_REQUESTS_PER_MINUTE),
    ("tokens_per_minute", MAX_TOKENS_PER_MINUTE),
    ("max_concurrent", MAX_CONCURRENT),
)


def rate_limit_problems(limits: metering_pb2.RateLimits, field: str) -> list[tuple[str, str]]:
    """Each limit of ``limits`` above its bound, as ``(field path, why)`` for
    :class:`switchboard_core.errors.InvalidArgument`: ``field`` is where ``limits`` sits in the
    request (``"rate_limits"`` gives ``"rate_limits.requests_per_minute"``). The proto's
    unsigned types already rule out negatives."""
    return [
        (f"{field}.{name}", f"at most {bound:,} (0: no limit)")
        for name, bound in _BOUNDS
        if getattr(limits, name) > bound
    ]
