"""Sweeps routers that died: their cut generations reach the ledger, their reservations return.

Every ``sweep_seconds`` metering lists the routers whose heartbeat expired and sweeps each
(:mod:`switchboard_core.liveness`: three steps, each in one Redis hash slot): the generations
it was streaming go to the usage outbox as FAILED events with their last estimated usage and
cost (the router priced them at its last heartbeat; the outbox checks that cost against the
catalog's prices like any other), its reservations are settled to those costs (released to 0
when no generation started) and its records are deleted. A killed router's reservations thus
return within its heartbeat TTL plus the sweep interval (~15 s by default).
Replicas may sweep together: a router is swept once, a reservation settled once.

Heartbeats expire by the clock while Redis is down, so nothing is swept until Redis has been
up for a heartbeat TTL: live routers have beaten again by then.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import RedisError

from switchboard_core.budget import BudgetStore
from switchboard_core.liveness import Liveness, Swept
from switchboard_core.periodic import Periodic

log = logging.getLogger(__name__)

ROUTERS_SWEPT = Counter(
    "switchboard_liveness_routers_swept_total",
    "Routers found dead (heartbeat expired) and swept.",
)
GENERATIONS_RECORDED = Counter(
    "switchboard_liveness_generations_recorded_total",
    "Generations a dead router was streaming, written to the usage outbox as FAILED.",
)
RESERVATIONS_RELEASED = Counter(
    "switchboard_liveness_reservations_released_total",
    "Reservations of dead routers settled to their generation's estimated cost or released.",
)


class Sweeper:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        stream: str,
        *,
        interval_seconds: float,
        heartbeat_ttl_seconds: float,
    ) -> None:
        self._liveness = Liveness(client, prefix, stream)
        self._store = BudgetStore(client, prefix)
        self._ttl = heartbeat_ttl_seconds
        self._job = Periodic("router-sweep", self.sweep, interval_seconds, (RedisError, OSError))

    async def sweep(self, now: datetime | None = None) -> list[Swept]:
        """Sweep every router whose heartbeat expired; returns what was swept."""
        dead = await self._liveness.dead()
        if not dead or await self._liveness.redis_uptime() < self._ttl:
            return []
        swept: list[Swept] = []
        for router_id in dead:
            result = await self._liveness.sweep(router_id, self._store, now)
            if result is None:  # it came back, or another replica swept it
                continue
            swept.append(result)
            ROUTERS_SWEPT.inc()
            GENERATIONS_RECORDED.inc(result.generations)
            RESERVATIONS_RELEASED.inc(result.reservations)
            log.warning(
                "swept a router whose heartbeat expired",
                extra={
                    "router_id": router_id,
                    "generations": result.generations,
                    "reservations": result.reservations,
                },
            )
        return swept

    def start(self) -> None:
        self._job.start()

    async def stop(self) -> None:
        await self._job.stop()
