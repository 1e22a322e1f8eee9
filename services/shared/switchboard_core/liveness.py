"""Router liveness in Redis: heartbeats, generations in flight, and sweeping dead routers.

A router killed with SIGKILL cannot meter the generations it was streaming nor settle its
reservations. So each router process, under an id of its own, keeps a heartbeat key with a
short TTL and records the generations it streams; metering sweeps every router whose heartbeat
expired, in ONE script per router: each recorded generation goes to the usage outbox as a
FAILED event with its last estimated usage and cost, each reservation the router held is
settled to its generation's cost (released to 0 when no generation started), and the router's
records are deleted. Routers use this module to write, metering to sweep, so the layout lives
in one place.

Layout, under the prefix routers and metering share for budgets (``switchboard:budget:``; the
reservations themselves are :mod:`switchboard_core.budget`'s):

- ``routers``: a set of the ids of routers that may hold records (added by every heartbeat,
  removed by a sweep or a clean leave);
- ``alive:<router id>``: the heartbeat, rewritten every ``interval`` (2 s) with a TTL
  (10 s); a router leaving gracefully deletes it once it has drained;
- ``gen:<router id>`` hash, a field ``<generation id>:<attempt>`` per generation in flight:
  ``<reservation id or -> <UsageEvent>``, the FAILED event that records the generation if the
  router dies (ids, route, create time, time to first token, usage and cost as first
  estimated), serialized, written once;
- ``progress:<router id>`` hash, the same fields: ``<cost in pico-dollars> <UsageEvent>``
  holding only usage (estimated completion tokens from the characters streamed so far), cost
  and latency, rewritten at each heartbeat when they changed. Protobuf parses concatenated
  messages as their merge (later fields win, sub-messages merge), so the sweep writes the
  template's bytes followed by the progress's, and needs no protobuf in Lua; swept events are
  always marked estimated (they are what the router knew at its last heartbeat);
- ``held:<router id>``: the reservations it holds (:mod:`switchboard_core.budget`).

A router registers a generation in the background within about 50 ms (and a round trip) of
its first token: registrations are batched, one write in flight at a time, and nothing waits
for them. Each heartbeat writes, in one MULTI/EXEC, the heartbeat and the progress of every
generation that streamed more since the last one. A generation's records are deleted in the
MULTI/EXEC that adds its usage event to the outbox, so once it is registered a crash leaves
the records or the event, never neither.

Timing: a killed router's heartbeat expires after the TTL and metering sweeps every ``sweep``
seconds (5 s), so its reservations return and its generations are recorded within TTL + sweep
(~15 s) of the kill. Death cannot be told from silence: a router cut off from Redis for longer
than the TTL (a partition, a long pause) is swept too. So the swept events are provisional:
the template carries ``swept`` (the progress never sets it, so the merge keeps it), and the
router's own later event for the same generation and attempt, which is what its client was
told, replaces the swept ledger row once, rollups corrected
(:mod:`switchboard_metering.ledger_corrections`); a swept event after the router's own is a
duplicate. Its late settles count nothing (the settled markers), so the key's Redis spend
keeps the swept cost until metering's resync raises it to the ledger's (a real cost below the
swept one stays counted at the swept one); when it beats again it logs the lapse and registers
its generations again. Keys expire by the clock while Redis is down, so metering sweeps nothing
until Redis has been up for a TTL (live routers have beaten again by then).

Idempotency: a sweep deletes what it acts on in the same script, so a second sweep, or another
metering replica's, finds nothing; reservations settle through budget's settled markers, so a
router that settles one too (it was only paused) counts once; and the script does nothing to a
router whose heartbeat is back. Every script here is safe to run twice.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from switchboard_core.budget import DEFAULT_PREFIX, day_field, month_field
from switchboard_core.budget_scripts import SETTLE_FUNCTION
from switchboard_core.config import EnvReader

DEFAULT_HEARTBEAT_SECONDS = 2.0
DEFAULT_HEARTBEAT_TTL_SECONDS = 10.0
DEFAULT_SWEEP_SECONDS = 5.0

# One sweep of a router whose heartbeat expired (ARGV: prefix, router id, stream, event
# field, day field, month field). Returns {1, generations recorded, reservations settled},
# or {0, 0, 0} when the router's heartbeat is back or it was swept already.
_SWEEP = (
    SETTLE_FUNCTION
    + """
local prefix, router = ARGV[1], ARGV[2]
if redis.call('EXISTS', prefix .. 'alive:' .. router) == 1
    or redis.call('SISMEMBER', prefix .. 'routers', router) == 0 then
  return {0, 0, 0}
end
local gens, progress = prefix .. 'gen:' .. router, prefix .. 'progress:' .. router
local held = prefix .. 'held:' .. router
local costs, recorded, settled = {}, 0, 0
local records = redis.call('HGETALL', gens)
for i = 1, #records, 2 do
  local template = records[i + 1]
  local cut = string.find(template, ' ', 1, true)
  local rid, event, cost = string.sub(template, 1, cut - 1), string.sub(template, cut + 1), '0'
  local latest = redis.call('HGET', progress, records[i])
  if latest then
    local at = string.find(latest, ' ', 1, true)
    cost, event = string.sub(latest, 1, at - 1), event .. string.sub(latest, at + 1)
  end
  redis.call('XADD', ARGV[3], '*', ARGV[4], event)
  recorded = recorded + 1
  if rid ~= '-' then costs[rid] = cost end
end
for _, rid in ipairs(redis.call('SMEMBERS', held)) do
  local rec = redis.call('GET', prefix .. 'res:' .. rid)
  if rec then  -- else settled already, or expired
    local k, a = string.match(rec, '^(%S+) (%S+) ')
    settled = settled + settle(prefix, rid, prefix .. 'key:' .. k, prefix .. 'acct:' .. a,
      prefix .. 'res_exp', costs[rid] or '0', ARGV[5], ARGV[6])
    -- the router may only have been cut off: its own settle may come as late as a request
    -- may last, and must still find the marker
    redis.call('EXPIRE', prefix .. 'settled:' .. rid, 86400)
  end
end
redis.call('DEL', gens, progress, held)
redis.call('SREM', prefix .. 'routers', router)
return {1, recorded, settled}
"""
)

# A drained router leaving: deletes its heartbeat, and its membership too when it holds
# nothing (else a sweep settles what is left). Returns 1 when nothing was left.
_LEAVE = """
local prefix, router = ARGV[1], ARGV[2]
redis.call('DEL', prefix .. 'alive:' .. router)
if redis.call('HLEN', prefix .. 'gen:' .. router) > 0 then return 0 end
if redis.call('SCARD', prefix .. 'held:' .. router) > 0 then return 0 end
redis.call('DEL', prefix .. 'progress:' .. router)
redis.call('SREM', prefix .. 'routers', router)
return 1
"""


def read_heartbeat(reader: EnvReader) -> tuple[float, float]:
    """The heartbeat interval and TTL (the TTL is read by metering too: the same on both)."""
    interval = reader.float(
        "SWITCHBOARD_ROUTER_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS, min_value=0.05
    )
    return interval, read_heartbeat_ttl(reader, interval)


def read_heartbeat_ttl(reader: EnvReader, interval: float = 0.0) -> float:
    name = "SWITCHBOARD_ROUTER_HEARTBEAT_TTL_SECONDS"
    ttl = reader.float(name, DEFAULT_HEARTBEAT_TTL_SECONDS, min_value=0.1)
    if ttl < 2 * interval:  # one late beat must not look like a death
        reader.problems.append(f"{name}: must be at least twice the heartbeat interval")
    return ttl


def new_router_id() -> str:
    """An id no other router process uses: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def generation_field(generation_id: str, attempt: int) -> str:
    return f"{generation_id}:{attempt}"


def template_value(reservation_id: str, event: bytes) -> bytes:
    return (reservation_id or "-").encode() + b" " + event


def progress_value(cost_pico: int, event: bytes) -> bytes:
    return str(cost_pico).encode() + b" " + event


def _encodable(values: Mapping[str, bytes]) -> dict[FieldT, EncodableT]:
    return {field: value for field, value in values.items()}  # as redis-py types hset


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Swept:
    router_id: str
    generations: int  # written to the outbox as FAILED
    reservations: int  # settled (to their generation's cost, or 0)


class Liveness:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._sweep = client.register_script(_SWEEP)
        self._leave = client.register_script(_LEAVE)

    def _key(self, kind: str, router_id: str) -> str:
        return f"{self._prefix}{kind}:{router_id}"

    async def beat(
        self,
        router_id: str,
        ttl_seconds: float,
        *,
        templates: Mapping[str, bytes],
        progress: Mapping[str, bytes],
        gone: Collection[str] = (),
    ) -> bool:
        """Refresh the heartbeat, write new and changed records and delete ``gone`` ones, in
        one MULTI/EXEC. Returns whether the heartbeat was still there (False on the first beat,
        and after a lapse: the router may have been swept, so its records are gone)."""
        gens, latest = self._key("gen", router_id), self._key("progress", router_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("alive", router_id), b"1", px=int(ttl_seconds * 1000), get=True)
            pipe.sadd(f"{self._prefix}routers", router_id)
            if templates:
                pipe.hset(gens, mapping=_encodable(templates))
            if progress:
                pipe.hset(latest, mapping=_encodable(progress))
            if gone:
                pipe.hdel(gens, *gone)
                pipe.hdel(latest, *gone)
            results: list[Any] = await pipe.execute()
        return results[0] is not None

    def forget(self, pipe: Any, router_id: str, field: str) -> None:
        """Add the deletion of a generation's records to ``pipe`` (the MULTI with its event)."""
        pipe.hdel(self._key("gen", router_id), field)
        pipe.hdel(self._key("progress", router_id), field)

    async def leave(self, router_id: str) -> bool:
        """A drained router stops beating: metering's next sweep settles what it left."""
        return bool(int(await self._leave(args=[self._prefix, router_id])))

    async def dead(self) -> list[str]:
        """Registered routers whose heartbeat expired."""
        members = sorted(_text(m) for m in await self._redis.smembers(f"{self._prefix}routers"))
        if not members:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for router_id in members:
                pipe.exists(self._key("alive", router_id))
            alive: list[Any] = await pipe.execute()
        return [r for r, up in zip(members, alive, strict=True) if not int(up)]

    async def sweep(
        self, router_id: str, stream: str, field: bytes, now: datetime | None = None
    ) -> Swept | None:
        """Record a dead router's generations to ``stream`` and settle its reservations;
        None when its heartbeat came back or it was swept already (running it again, or
        another metering replica, changes nothing)."""
        now = now or datetime.now(UTC)
        args: list[str | bytes] = [
            self._prefix,
            router_id,
            stream,
            field,
            day_field(now),
            month_field(now),
        ]
        done, generations, reservations = await self._sweep(args=args)
        if not int(done):
            return None
        return Swept(router_id, int(generations), int(reservations))

    async def redis_uptime(self) -> float:
        """Seconds since Redis started: heartbeats may have expired while it was down. A
        Redis that does not say (a proxy refusing INFO) counts as up long enough."""
        try:
            info: Mapping[str, Any] = await self._redis.info("server")
        except ResponseError:
            return math.inf
        return float(info.get("uptime_in_seconds", math.inf))
