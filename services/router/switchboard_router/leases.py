"""Concurrency leases this router holds (keys', accounts' and endpoints' slots), renewed while
their requests run.

A slot is a lease in Redis that expires after ``SWITCHBOARD_CONCURRENCY_LEASE_SECONDS``
unless its holder renews it (:mod:`switchboard_core.rate_limits`). One background task renews
every lease held here each third of that time, in ONE pipeline whatever their number, so a
live router keeps its slots through two failed renewals, and a dead one frees them within the
lease time without anybody sweeping. A renewal is bounded by the router's Redis deadline and
only counted when it fails (the request goes on: the worst case is that its slot expires and
someone else's request takes it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis import exceptions as redis_errors

from switchboard_core.periodic import BackgroundTask
from switchboard_core.rate_limits import RateLimiter
from switchboard_core.redis_client import RedisDeadline

log = logging.getLogger(__name__)


class LeaseKeeper(BackgroundTask):
    """Renews the concurrency leases this router holds, every third of the lease time, in one
    pipeline (a task started and stopped with the router)."""

    name = "lease-renewal"

    def __init__(self, limiter: RateLimiter, deadline: RedisDeadline, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._limiter = limiter
        self._deadline = deadline
        self._held: dict[str, tuple[str, ...]] = {}  # lease id: the keys of its sets

    @property
    def held(self) -> int:
        return len(self._held)

    def hold(self, lease: str, keys: Sequence[str]) -> None:
        """Renew ``lease`` in ``keys`` (sets of one slot) until :meth:`drop`."""
        self._held[lease] = tuple(keys)

    def drop(self, lease: str) -> None:
        self._held.pop(lease, None)

    async def renew(self) -> None:
        """Renew every held lease now (one pipeline); a failure is left to the next round."""
        held = dict(self._held)
        if not held:
            return
        try:
            await self._deadline.run(
                "lease_renew", lambda: self._limiter.renew(held, self.lease_seconds)
            )
        except (redis_errors.RedisError, OSError) as error:
            log.debug("lease renewal failed", extra={"error": type(error).__name__})

    async def _run(self) -> None:
        """Stopping leaves the leases still held to expire by themselves within the lease
        time."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            await self.renew()
