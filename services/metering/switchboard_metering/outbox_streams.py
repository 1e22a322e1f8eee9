"""Every stream of the usage outbox, drained: the base stream and each shard routers registered.

Routers split the outbox into N streams when told to (``SWITCHBOARD_USAGE_STREAMS``;
:mod:`switchboard_core.usage_outbox`), and each adds the stream it writes to the registry set
at every heartbeat, before it writes anything there. Metering runs, per stream, an outbox
consumer (:class:`.outbox.OutboxConsumer`, in that stream's consumer group) and a sweeper of
dead routers (:class:`.sweeper.Sweeper`: a router's records live in its stream's slot): for the
base stream from the start, and for each registered shard from the first look that finds it
(at start, then every ``OutboxSettings.discover_seconds``). So metering needs no setting of
its own for N, and a router configured with more streams than before loses nothing. A stream
is never dropped: one no router writes any more is still drained (an idle blocking read each
second). The registry is bounded: only the base's shard names (``<base>:0`` ...
``<base>:63``) are drained, anything else in it is logged once and left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import redis.asyncio as redis
from redis.exceptions import RedisError

from switchboard_core.periodic import Periodic
from switchboard_core.usage_outbox import is_shard_of, registry_key
from switchboard_metering.config import OutboxSettings
from switchboard_metering.ledger import Ledger
from switchboard_metering.outbox import OutboxConsumer
from switchboard_metering.sweeper import Sweeper

log = logging.getLogger(__name__)

MAX_IGNORED = 1024  # registry entries that are no shard, remembered (and logged) at most


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class UsageStreams:
    """The consumers and sweepers of every outbox stream; ``settings`` names the base stream
    (each shard's consumer has the same settings, its own stream)."""

    def __init__(
        self,
        client: redis.Redis,
        ledger: Ledger,
        settings: OutboxSettings,
        *,
        prefix: str,
        sweep_seconds: float,
        heartbeat_ttl_seconds: float,
        ready: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """``ready``: what each consumer waits for before its first read (metering's first
        view of the catalog's prices), called once per stream."""
        self._redis = client
        self._ledger = ledger
        self._settings = settings
        self._prefix = prefix
        self._sweep_seconds = sweep_seconds
        self._ttl = heartbeat_ttl_seconds
        self._ready = ready
        self._registry = registry_key(settings.stream)
        self._drained: dict[str, tuple[OutboxConsumer, Sweeper]] = {}
        self._ignored: set[str] = set()
        self._job = Periodic(
            "usage-stream-discovery",
            self.discover,
            settings.discover_seconds,
            (RedisError, OSError),
        )

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams drained, the base stream first."""
        return tuple(self._drained)

    async def start(self) -> None:
        """Drain the base stream and every shard registered so far; then look again every
        ``discover_seconds``. Redis down: the shards are found by a later look."""
        self._drain(self._settings.stream)
        try:
            await self.discover()
        except (RedisError, OSError) as error:
            log.warning("usage streams not listed yet", extra={"error": type(error).__name__})
        self._job.start()

    async def discover(self) -> list[str]:
        """Start draining each registered shard not drained yet; returns those."""
        base = self._settings.stream
        found = []
        for member in sorted(_text(m) for m in await self._redis.smembers(self._registry)):
            if member in self._drained or member in self._ignored:
                continue
            if not is_shard_of(base, member):
                if len(self._ignored) >= MAX_IGNORED:
                    continue  # logged enough: a registry this wrong needs an operator anyway
                self._ignored.add(member)
                log.warning(
                    "usage stream registry lists a stream that is no shard of the outbox",
                    extra={"registry": self._registry, "stream": member[:200]},
                )
                continue
            self._drain(member)
            found.append(member)
        return found

    def _drain(self, stream: str) -> None:
        consumer = OutboxConsumer(self._redis, self._ledger, replace(self._settings, stream=stream))
        consumer.start(self._ready() if self._ready is not None else None)
        sweeper = Sweeper(
            self._redis,
            self._prefix,
            stream,
            interval_seconds=self._sweep_seconds,
            heartbeat_ttl_seconds=self._ttl,
        )
        sweeper.start()  # routers that died: their generations recorded, reservations released
        self._drained[stream] = (consumer, sweeper)

    async def stop(self) -> None:
        """Stop looking, then the sweepers and the consumers, all at once (each consumer
        finishes the batch in hand, within its own bound)."""
        await self._job.stop()
        drained = list(self._drained.values())
        await asyncio.gather(*(sweeper.stop() for _, sweeper in drained))
        await asyncio.gather(*(consumer.stop() for consumer, _ in drained))
