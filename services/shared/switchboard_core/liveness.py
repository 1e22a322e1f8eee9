"""Router liveness in Redis: heartbeats, generations in flight, and sweeping dead routers.

A router killed with SIGKILL cannot meter the generations it was streaming nor settle its
reservations. So each router process, under an id of its own, keeps a heartbeat key with a
short TTL and records the generations it streams; metering sweeps every router whose heartbeat
expired: each recorded generation goes to the usage outbox as a
FAILED event with its last estimated usage and cost, each reservation the router held is
settled to its generation's cost (released to 0 when no generation started), and the router's
records are deleted. Routers use this module to write, metering to sweep, so the layout lives
in one place.

Layout. The records are deleted in the script that adds the generation's usage event to the
outbox stream (:meth:`Liveness.publish`), so on Redis Cluster they must share its hash slot:
every key here is ``{<the stream's tag>}:...`` (:func:`switchboard_core.usage_outbox.colocated`;
``S`` below):

- ``S:routers``: a set of the ids of routers that may hold records (added by every heartbeat,
  removed by a sweep or a clean leave);
- ``S:alive:<router id>``: the heartbeat, rewritten every ``interval`` (2 s) with a TTL
  (10 s); a router leaving gracefully deletes it once it has drained;
- ``S:gen:<router id>`` hash, a field ``<generation id>:<attempt>`` per generation in flight:
  ``<reservation id or -> <UsageEvent>``, the FAILED event that records the generation if the
  router dies (ids, route, create time, time to first token, usage and cost as first
  estimated), serialized, written once;
- ``S:progress:<router id>`` hash, the same fields: ``<cost in pico-dollars> <UsageEvent>``
  holding only usage (estimated completion tokens from the characters streamed so far), cost
  and latency, rewritten at each heartbeat when they changed. Protobuf parses concatenated
  messages as their merge (later fields win, sub-messages merge), so the sweep writes the
  template's bytes followed by the progress's, and needs no protobuf in Lua; swept events are
  always marked estimated (they are what the router knew at its last heartbeat);
- ``S:owed:<router id>`` hash: reservation id -> cost (pico-dollars) of its generation, written
  by a sweep's first step for its second; ``S:sweeping:<router id>``: the lease of the sweep in
  progress (one at a time, lapsing after ``SWEEP_LEASE_SECONDS`` if its sweeper died);
- the reservations a router holds are its accounts' (:mod:`switchboard_core.budget`), each in
  its account's slot, found through the router's index ``<prefix>holds:<router id>``.

Sweeping a dead router is three steps, because its generations (the stream's slot) and its
reservations (one slot per account) cannot be touched by one script on a cluster:

1. one script in the stream's slot, only if the heartbeat is still gone: every recorded
   generation goes to the outbox as a FAILED event, the reservation costs they name go to
   ``owed``, and the records are deleted (in the same script: a generation is recorded once);
2. :meth:`switchboard_core.budget.BudgetStore.sweep_holder` settles the router's reservations
   account by account to the ``owed`` costs (0 where none), and empties the index;
3. a script in the stream's slot deletes ``owed`` and the membership, unless the heartbeat
   is back or the index is not empty.

A sweep cut short anywhere (metering killed, Redis gone) leaves the router a member, so the
next sweep once the lease lapsed repeats from step 1: it finds no records left (nothing is
recorded twice), the
``owed`` costs still there, and the reservations not yet settled (settled markers make each
count once).

A router registers a generation in the background within about 50 ms (and a round trip) of
its first token: registrations are batched, one write in flight at a time, and nothing waits
for them. Each heartbeat writes, in one MULTI/EXEC, the heartbeat and the progress of every
generation that streamed more since the last one. A generation's records are deleted in the
script that adds its usage event to the outbox, so once it is registered a crash leaves the
records or the event, never neither.

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

Idempotency: a sweep deletes the records it writes to the outbox in the same script, so a
second sweep, or another metering replica's, records nothing again; reservations settle through
budget's settled markers, so a router that settles one too (it was only paused) counts once;
and step 1 does nothing to a router whose heartbeat is back. Every script here is safe to run
twice, and each touches only the keys it is given (``KEYS``).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import redis.asyncio as redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT, KeyT

from switchboard_core.budget import BudgetStore, holds_key
from switchboard_core.config import EnvReader
from switchboard_core.usage_outbox import EVENT_FIELD, colocated, stream_for

DEFAULT_HEARTBEAT_SECONDS = 2.0
DEFAULT_HEARTBEAT_TTL_SECONDS = 10.0
DEFAULT_SWEEP_SECONDS = 5.0
# One sweep of a router holds it this long at most: a metering replica that died mid-sweep
# leaves the rest to the next sweep after it.
SWEEP_LEASE_SECONDS = 30.0

# Step 1 of a sweep. KEYS: alive, routers, gen, progress, the outbox stream, owed, the
# sweep's lease. ARGV: router id, event field, the lease (ms). Returns {1, generations
# recorded}, or {0, 0} when the router's heartbeat is back, it was swept already, or another
# sweep of it holds the lease (taken here, dropped by step 3; it lapses if that sweep died).
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  return {0, 0}
end
if not redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[3]) then
  return {0, 0}
end
local recorded = 0
local records = redis.call('HGETALL', KEYS[3])
for i = 1, #records, 2 do
  local template = records[i + 1]
  local cut = string.find(template, ' ', 1, true)
  local rid, event, cost = string.sub(template, 1, cut - 1), string.sub(template, cut + 1), '0'
  local latest = redis.call('HGET', KEYS[4], records[i])
  if latest then
    local at = string.find(latest, ' ', 1, true)
    cost, event = string.sub(latest, 1, at - 1), event .. string.sub(latest, at + 1)
  end
  redis.call('XADD', KEYS[5], '*', ARGV[2], event)
  recorded = recorded + 1
  if rid ~= '-' then redis.call('HSET', KEYS[6], rid, cost) end
end
redis.call('DEL', KEYS[3], KEYS[4])
return {1, recorded}
"""

# Step 3. KEYS: alive, routers, owed, the sweep's lease. ARGV: router id, how many accounts
# its index still lists. Returns 1 when the router is no longer a member.
_FINISH = """
redis.call('DEL', KEYS[4])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[3])
  return 0  -- it beat again: a member, with records of its own
end
if tonumber(ARGV[2]) > 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# The usage sink's write (:meth:`Liveness.publish`): each event to the outbox and the deletion
# of its generation's records, for a group of events in one atomic script (a script rather than
# a MULTI of XADD and HDELs: about half redis-py's client CPU for one event, a sixth per event
# for 32 together; docs/BENCHMARKS.md, issue 12's third sitting). KEYS: the outbox stream,
# then per event the two hashes of its records (``gen``, ``progress``). ARGV: the event field,
# then per event its payload and its records' field.
_PUBLISH = """
for i = 1, (#KEYS - 1) / 2 do
  redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2 * i])
  redis.call('HDEL', KEYS[2 * i], ARGV[2 * i + 1])
  redis.call('HDEL', KEYS[2 * i + 1], ARGV[2 * i + 1])
end
"""

# A drained router leaving. KEYS: alive, routers, gen, progress. ARGV: router id, how many
# accounts it still holds reservations in. Deletes its heartbeat, and its membership too when
# it holds nothing (else a sweep settles what is left). Returns 1 when nothing was left.
_LEAVE = """
redis.call('DEL', KEYS[1])
if redis.call('HLEN', KEYS[3]) > 0 then return 0 end
if tonumber(ARGV[2]) > 0 then return 0 end
redis.call('DEL', KEYS[4])
redis.call('SREM', KEYS[2], ARGV[1])
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


class Delivery(NamedTuple):
    """A usage event for the outbox (serialized) and the records it replaces: ``field`` of
    router ``router_id`` (this router's, or another process's for a spool replay)."""

    payload: bytes
    router_id: str
    field: str


@dataclass(frozen=True, slots=True)
class Swept:
    router_id: str
    generations: int  # written to the outbox as FAILED
    reservations: int  # settled (to their generation's cost, or 0)


class Liveness:
    """Routers' records, in the hash slot of the usage outbox ``stream`` (where the script
    that adds a router's event deletes them); ``prefix`` is the budgets' (the holds index)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        stream: str,
        *,
        streams: tuple[str, ...] = (),
        registry: str | None = None,
    ) -> None:
        """No defaults: a router and the metering that sweeps it must name the same prefix and
        stream, or the sweep looks where the router never wrote.

        A router of a sharded outbox (:mod:`switchboard_core.usage_outbox`) passes every
        stream (``streams``: a delivery that names another router process goes to that
        process's stream, where its records are) and the ``registry`` set, to which each beat
        adds ``stream`` before anything is written to it."""
        self._redis = client
        self._prefix = prefix
        self.stream = stream
        self._streams = streams
        self._registry = registry
        self._siblings: dict[str, Liveness] = {}
        self._record = client.register_script(_RECORD)
        self._finish = client.register_script(_FINISH)
        self._leave = client.register_script(_LEAVE)
        self._publish = client.register_script(_PUBLISH)

    def _key(self, kind: str, router_id: str) -> str:
        return colocated(self.stream, f":{kind}:{router_id}")

    @property
    def _routers(self) -> str:
        return colocated(self.stream, ":routers")

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
        if self._registry is not None:  # before any record or event: metering drains it
            await self._redis.sadd(self._registry, self.stream)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("alive", router_id), b"1", px=int(ttl_seconds * 1000), get=True)
            pipe.sadd(self._routers, router_id)
            if templates:
                pipe.hset(gens, mapping=_encodable(templates))
            if progress:
                pipe.hset(latest, mapping=_encodable(progress))
            if gone:
                pipe.hdel(gens, *gone)
                pipe.hdel(latest, *gone)
            results: list[Any] = await pipe.execute()
        return results[0] is not None

    async def publish(self, deliveries: Sequence[Delivery]) -> None:
        """Add each event to :attr:`stream` and delete its generation's records, all in one
        atomic script: a crash leaves an event's records or the event, never neither. On a
        sharded outbox, a delivery of another router process (a spool replay) goes to that
        process's stream instead, in a script of its own (that stream's slot)."""
        if len(self._streams) > 1:
            elsewhere: dict[str, list[Delivery]] = {}
            here: list[Delivery] = []
            for delivery in deliveries:
                stream = stream_for(delivery.router_id, self._streams)
                (here if stream == self.stream else elsewhere.setdefault(stream, [])).append(
                    delivery
                )
            for stream, group in elsewhere.items():
                if self._registry is not None:  # perhaps no live router writes it
                    await self._redis.sadd(self._registry, stream)
                await self._sibling(stream).publish(group)
            if not here:
                return
            deliveries = here
        keys: list[KeyT] = [self.stream]
        args: list[EncodableT] = [EVENT_FIELD]
        for payload, router_id, field in deliveries:
            keys += (self._key("gen", router_id), self._key("progress", router_id))
            args += (payload, field)
        await self._publish(keys=keys, args=args)

    def _sibling(self, stream: str) -> Liveness:
        """The records of the routers that write ``stream``."""
        sibling = self._siblings.get(stream)
        if sibling is None:
            sibling = self._siblings[stream] = Liveness(self._redis, self._prefix, stream)
        return sibling

    async def _held(self, router_id: str) -> int:
        return int(await self._redis.scard(holds_key(self._prefix, router_id)))

    async def leave(self, router_id: str) -> bool:
        """A drained router stops beating: metering's next sweep settles what it left."""
        keys = [self._key(kind, router_id) for kind in ("alive", "routers", "gen", "progress")]
        keys[1] = self._routers
        held = await BudgetStore(self._redis, self._prefix).prune_holds(router_id)
        return bool(int(await self._leave(keys=keys, args=[router_id, held])))

    async def dead(self) -> list[str]:
        """Registered routers whose heartbeat expired."""
        members = sorted(_text(m) for m in await self._redis.smembers(self._routers))
        if not members:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for router_id in members:
                pipe.exists(self._key("alive", router_id))
            alive: list[Any] = await pipe.execute()
        return [r for r, up in zip(members, alive, strict=True) if not int(up)]

    async def record(self, router_id: str, field: bytes) -> int | None:
        """Sweep step 1: the dead router's generations to the outbox (``field``: the entry's
        field), their reservations' costs kept for step 2; returns how many were recorded, or
        None when its heartbeat came back or it was swept already."""
        keys = [
            self._key("alive", router_id),
            self._routers,
            self._key("gen", router_id),
            self._key("progress", router_id),
            self.stream,
            self._key("owed", router_id),
            self._key("sweeping", router_id),
        ]
        lease = int(SWEEP_LEASE_SECONDS * 1000)
        done, recorded = await self._record(keys=keys, args=[router_id, field, lease])
        return int(recorded) if int(done) else None

    async def owed(self, router_id: str) -> dict[str, str]:
        """Reservation id -> cost (pico-dollars) of its generation, from step 1."""
        values = await self._redis.hgetall(self._key("owed", router_id))
        return {_text(k): _text(v) for k, v in values.items()}

    async def finish(self, router_id: str) -> bool:
        """Sweep step 3: forget the router once its index is empty and its heartbeat still
        gone; returns whether it was forgotten."""
        keys = [self._key("alive", router_id), self._routers, self._key("owed", router_id)]
        keys.append(self._key("sweeping", router_id))
        held = await self._held(router_id)
        return bool(int(await self._finish(keys=keys, args=[router_id, held])))

    async def sweep(
        self, router_id: str, store: BudgetStore, now: datetime | None = None
    ) -> Swept | None:
        """The three steps of a dead router's sweep (module doc); None when its heartbeat
        came back or it was swept already (running it again, or another metering replica,
        changes nothing)."""
        recorded = await self.record(router_id, EVENT_FIELD)
        if recorded is None:
            return None
        settled = await store.sweep_holder(router_id, await self.owed(router_id), now)
        await self.finish(router_id)
        return Swept(router_id, recorded, settled)

    async def redis_uptime(self) -> float:
        """Seconds since Redis started: heartbeats may have expired while it was down. A
        Redis that does not say (a proxy refusing INFO) counts as up long enough. On a
        cluster, the least of its nodes' (a node restarted alone may have lost keys)."""
        try:
            info: Mapping[str, Any] = await self._redis.info("server")
        except ResponseError:
            return math.inf
        if "uptime_in_seconds" not in info:  # a cluster client: one answer per node
            nodes = [v for v in info.values() if isinstance(v, Mapping)]
            return min(
                (float(n.get("uptime_in_seconds", math.inf)) for n in nodes), default=math.inf
            )
        return float(info.get("uptime_in_seconds", math.inf))
