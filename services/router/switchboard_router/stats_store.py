"""The Redis side of live endpoint statistics and shared circuit breakers: the layout, one
pipeline to add a router's counts, one to read everyone's back.

Layout, under the router's prefix (``SWITCHBOARD_BUDGET_PREFIX``, ``switchboard:budget:``),
every per-endpoint key hash-tagged with the endpoint id so that one endpoint's keys share a
Redis Cluster slot:

- ``stats:{<endpoint>}:<bucket>`` hash: the counts every router added for the endpoint in
  time bucket ``<bucket>`` (``floor(unix seconds / BUCKET_SECONDS)``): ``n`` attempts, ``f``
  failures on the provider's side, ``o`` of them timeouts, ``r`` of them 429s, ``t<i>`` first
  tokens in time-to-first-token bucket ``i`` and ``p<i>`` completions in throughput bucket
  ``i`` (:mod:`switchboard_router.stats_histogram`). Written with ``HINCRBY`` only, so
  routers' counts add up; expires a little after the window (:meth:`StatsStore.ttl`);
- ``stats:endpoints`` sorted set: endpoint ids by when a router last wrote counts for them
  (ms), so a router finds endpoints it never served; trimmed to the window as it is written;
- ``breaker:{<endpoint>}``: an open breaker, ``"<epoch ms> <until ms> <cause>"``
  (:class:`~switchboard_router.breaker.Opening`), written by the router that opened it with
  ``PX`` = until its half-open period would end unjudged; deleted by the router whose probe
  closed it (only if it still names that epoch); a router that opens it while another's
  opening lasts longer keeps the longer one (:data:`OPEN_SCRIPT`);
- ``breaker:{<endpoint>}:probes:<epoch>``: how many half-open probe tokens routers claimed
  for that opening (``INCR``; the first ``probes`` claims win), expiring with it.

A bucket is *final* :attr:`StatsStore.settle_seconds` after it ends: readers cache final
buckets and re-read only the recent ones, so a refresh costs a few reads per endpoint however
long the window. A writer adds counts to their own bucket only while it is not close to final
(half the settle time); counts that waited longer (Redis was unreachable) go to the current
bucket, so that no reader has cached a bucket that changes afterwards. Clocks of routers are
assumed to agree well within the settle time (NTP). A flush whose reply was lost (Redis took
it, the connection dropped) is retried and may count twice: these are statistics, not money.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis.asyncio as redis

from switchboard_core.redis_client import RedisDeadline
from switchboard_router.breaker import Change, Opening

BUCKET_SECONDS = 5
_COUNT_FIELDS = (("n", "requests"), ("f", "failures"), ("o", "timeouts"), ("r", "rate_limited"))

# Keep the longer opening: a cool-down of 5 minutes is not cut short by another router's
# 30-second opening. KEYS[1] the breaker key; ARGV: the encoded opening, its until (ms), PX.
OPEN_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local until_ms = tonumber(string.match(current, '^%d+ (%d+)'))
  if until_ms and until_ms >= tonumber(ARGV[2]) then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return ARGV[1]
"""
# Delete the opening only if it is still the one that was probed. KEYS[1]; ARGV[1] its epoch.
CLOSE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and string.match(current, '^(%d+) ') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


@dataclass(slots=True)
class Tally:
    """One endpoint's counts in one time bucket."""

    requests: int = 0
    failures: int = 0
    timeouts: int = 0
    rate_limited: int = 0
    ttft: dict[int, int] = field(default_factory=dict)  # TTFT_SCALE bucket -> first tokens
    throughput: dict[int, int] = field(default_factory=dict)  # THROUGHPUT_SCALE bucket -> count

    def add(self, other: Tally, sign: int = 1) -> None:
        """Add ``other``'s counts (``sign`` -1: take them away)."""
        self.requests += sign * other.requests
        self.failures += sign * other.failures
        self.timeouts += sign * other.timeouts
        self.rate_limited += sign * other.rate_limited
        for mine, theirs in ((self.ttft, other.ttft), (self.throughput, other.throughput)):
            for index, count in theirs.items():
                left = mine.get(index, 0) + sign * count
                if left:
                    mine[index] = left
                else:
                    mine.pop(index, None)

    def copy(self) -> Tally:
        return Tally(
            self.requests,
            self.failures,
            self.timeouts,
            self.rate_limited,
            dict(self.ttft),
            dict(self.throughput),
        )

    @property
    def empty(self) -> bool:
        return not (self.requests or self.failures or self.ttft or self.throughput)

    def fields(self) -> dict[str, int]:
        """The hash fields to add (non-zero only)."""
        out = {name: getattr(self, attr) for name, attr in _COUNT_FIELDS if getattr(self, attr)}
        out.update({f"t{i}": n for i, n in self.ttft.items() if n})
        out.update({f"p{i}": n for i, n in self.throughput.items() if n})
        return out

    @classmethod
    def parse(cls, raw: Mapping[bytes, bytes]) -> Tally:
        """A bucket's hash; fields it does not know (a newer router's) are ignored."""
        tally = cls()
        names = dict(_COUNT_FIELDS)
        for key, value in raw.items():
            name = key.decode(errors="replace")
            try:
                count = int(value)
            except ValueError:
                continue
            if name in names:
                setattr(tally, names[name], count)
            elif name[:1] in ("t", "p") and name[1:].isdigit():
                target = tally.ttft if name[0] == "t" else tally.throughput
                target[int(name[1:])] = count
        return tally


class Series:
    """One endpoint's shared counts as last read: final buckets cached and summed (a bucket
    leaving the window is taken off the sum), recent ones replaced at each read."""

    def __init__(self) -> None:
        self.final: dict[int, Tally] = {}
        self.final_sum = Tally()
        self.recent: dict[int, Tally] = {}
        self.final_upto: int | None = None  # every bucket up to this one is final and cached

    def store(self, bucket: int, tally: Tally, final: bool) -> None:
        if final:
            if bucket not in self.final:
                self.final[bucket] = tally
                self.final_sum.add(tally)
            self.recent.pop(bucket, None)
            if self.final_upto is None or bucket > self.final_upto:
                self.final_upto = bucket
        else:
            self.recent[bucket] = tally

    def prune(self, first: int) -> None:
        """Forget buckets before ``first``."""
        for bucket in [b for b in self.final if b < first]:
            self.final_sum.add(self.final.pop(bucket), -1)
        for bucket in [b for b in self.recent if b < first]:
            del self.recent[bucket]

    @property
    def empty(self) -> bool:
        return not self.final and not self.recent

    def total(self) -> Tally:
        out = self.final_sum.copy()
        for tally in self.recent.values():
            out.add(tally)
        return out

    def since(self, first: int) -> dict[int, Tally]:
        """The buckets from ``first`` on."""
        found = {b: t for b, t in self.final.items() if b >= first}
        found.update((b, t) for b, t in self.recent.items() if b >= first)
        return found


@dataclass(frozen=True, slots=True)
class Read:
    """What a refresh read: endpoints with recent counts (the index; empty when not asked),
    the buckets read, each endpoint's opening (None: closed) and the probe claims' counts."""

    endpoints: tuple[str, ...]
    tallies: dict[tuple[str, int], Tally]
    openings: dict[str, Opening | None]
    claims: tuple[int, ...]


def bucket_of(seconds: float) -> int:
    return math.floor(seconds / BUCKET_SECONDS)


class StatsStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        window_seconds: float,
        deadline: RedisDeadline,
        settle_seconds: float = 10.0,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self.window_seconds = window_seconds
        self._deadline = deadline
        self.settle_seconds = settle_seconds

    # -- layout ---------------------------------------------------------------------------

    def bucket_key(self, endpoint_id: str, bucket: int) -> str:
        return f"{self._prefix}stats:{{{endpoint_id}}}:{bucket}"

    def breaker_key(self, endpoint_id: str) -> str:
        return f"{self._prefix}breaker:{{{endpoint_id}}}"

    def probes_key(self, endpoint_id: str, epoch: int) -> str:
        return f"{self._prefix}breaker:{{{endpoint_id}}}:probes:{epoch}"

    @property
    def index_key(self) -> str:
        return f"{self._prefix}stats:endpoints"

    @property
    def ttl(self) -> int:
        """Seconds a bucket's hash lives: the window, a bucket and the settle time, and more."""
        return math.ceil(self.window_seconds + 2 * BUCKET_SECONDS + self.settle_seconds)

    def final(self, bucket: int, now: float) -> bool:
        """Whether no router adds to ``bucket`` any more (readers may cache it)."""
        return (bucket + 1) * BUCKET_SECONDS + self.settle_seconds <= now

    def target(self, bucket: int, now: float) -> int:
        """The bucket counts of ``bucket`` are written to at ``now``: their own while it is
        well short of final, else the current one."""
        if (bucket + 1) * BUCKET_SECONDS + self.settle_seconds / 2 <= now:
            return bucket_of(now)
        return bucket

    # -- writes ---------------------------------------------------------------------------

    async def flush(
        self,
        tallies: Mapping[tuple[str, int], Tally],
        changes: Sequence[tuple[str, Change, float]],
        active: Iterable[str],
        now: float,
    ) -> list[Opening | None]:
        """Add ``tallies`` (by endpoint and bucket), write breaker ``changes`` (endpoint, change,
        and for an opening the seconds its key lives) and mark ``active`` endpoints recent, in
        one pipeline. Returns, per change, the opening Redis kept (None for a close)."""
        now_ms = round(now * 1000)
        ttl = self.ttl
        pipe = self._redis.pipeline(transaction=False)
        touched: dict[str, int] = {endpoint: now_ms for endpoint in active}
        for (endpoint, bucket), tally in tallies.items():
            fields = tally.fields()
            if not fields:
                continue
            key = self.bucket_key(endpoint, bucket)
            for name, count in fields.items():
                pipe.hincrby(key, name, count)
            pipe.expire(key, ttl)
            touched[endpoint] = now_ms
        if touched:
            pipe.zadd(self.index_key, touched)
            pipe.zremrangebyscore(self.index_key, "-inf", now_ms - ttl * 1000)
            pipe.expire(self.index_key, ttl)
        scripted: list[int] = []  # where each change's reply is
        for endpoint, change, lifetime in changes:
            key = self.breaker_key(endpoint)
            scripted.append(len(pipe))
            if isinstance(change, Opening):
                px = max(1, round(lifetime * 1000))
                pipe.eval(OPEN_SCRIPT, 1, key, change.encode(), round(change.until * 1000), px)
            else:
                pipe.eval(CLOSE_SCRIPT, 1, key, str(change.epoch))
        if not len(pipe):
            return []
        replies = await self._deadline.run("stats_flush", pipe.execute)
        out: list[Opening | None] = []
        for (_, change, _), at in zip(changes, scripted, strict=True):
            out.append(Opening.decode(replies[at]) if isinstance(change, Opening) else None)
        return out

    # -- reads ----------------------------------------------------------------------------

    async def read(
        self,
        buckets: Mapping[str, Sequence[int]],
        claims: Sequence[tuple[str, int, float]],
        now: float,
        *,
        index: bool = True,
    ) -> Read:
        """In one pipeline: the endpoints with recent counts (when ``index``), each endpoint's
        ``buckets`` and opening, and a probe token claim per (endpoint, epoch, seconds left)."""
        pipe = self._redis.pipeline(transaction=False)
        if index:
            floor = round((now - self.window_seconds - self.settle_seconds) * 1000)
            pipe.zrangebyscore(self.index_key, floor, "+inf")
        for endpoint, numbers in buckets.items():
            for bucket in numbers:
                pipe.hgetall(self.bucket_key(endpoint, bucket))
            pipe.get(self.breaker_key(endpoint))
        for endpoint, epoch, seconds in claims:
            key = self.probes_key(endpoint, epoch)
            pipe.set(key, 0, nx=True, px=max(1, round(seconds * 1000)))
            pipe.incr(key)
        if not len(pipe):
            return Read((), {}, {}, ())
        replies = list(await self._deadline.run("stats_refresh", pipe.execute))
        endpoints: tuple[str, ...] = ()
        if index:
            endpoints = tuple(m.decode(errors="replace") for m in replies.pop(0))
        tallies: dict[tuple[str, int], Tally] = {}
        openings: dict[str, Opening | None] = {}
        at = 0
        for endpoint, numbers in buckets.items():
            for bucket in numbers:
                tallies[(endpoint, bucket)] = Tally.parse(replies[at])
                at += 1
            openings[endpoint] = Opening.decode(replies[at])
            at += 1
        counts = tuple(int(replies[at + 2 * i + 1]) for i in range(len(claims)))
        return Read(endpoints, tallies, openings, counts)
