"""This router's heartbeat and the generations it streams, kept in Redis for metering's sweep.

The layout, and what metering does when the heartbeat stops: :mod:`switchboard_core.liveness`.
Nothing here is on a request's path. :meth:`InFlight.track` notes a generation in memory and
wakes a background writer, which registers new generations (batched: one write in flight,
writes at least ``REGISTER_BATCH_SECONDS`` apart) and, every heartbeat, refreshes the heartbeat
and the progress of every generation that streamed more since, in one MULTI/EXEC. The usage
sink deletes a generation's records in the script that adds its usage event; it calls
:meth:`InFlight.release` first, which waits out a write including that generation, so no write
can bring the records back after they were deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import to_pico
from switchboard_core.liveness import (
    Delivery,
    Liveness,
    generation_field,
    progress_value,
    template_value,
)
from switchboard_router.canonical import Finish, FinishEvent, UsageReport
from switchboard_router.generation import Generation
from switchboard_router.usage_sink import FAILED, usage_event

log = logging.getLogger(__name__)

# New generations are written this long apart at most once, so a busy router registers them
# in batches rather than one round trip each.
REGISTER_BATCH_SECONDS = 0.05

# Characters streamed and the usage the generation would be billed now: the usage changes
# without a character streamed while hidden reasoning goes on (running counts, the allowance).
Mark = tuple[int, UsageReport]


def _mark(generation: Generation) -> Mark:
    return (generation.text_chars, generation.final_usage())


def _failed_event(
    generation: Generation, usage: UsageReport | None
) -> tuple[metering_pb2.UsageEvent, int]:
    """The FAILED event recording the generation as it stands, and its cost in pico-dollars.
    ``usage``: its final usage if the caller has it already (estimating it again was a fifth
    of a registration's CPU, measured)."""
    usage = generation.final_usage() if usage is None else usage
    cost = generation.cost(usage)
    event = usage_event(generation, FAILED, usage, cost, FinishEvent(Finish.ERROR, ""))
    event.usage.estimated = True  # what the router knew at its last heartbeat
    # Provisional: the router's own event for the generation replaces the ledger row. The
    # template keeps the flag and the progress never sets it, so the sweep's merge keeps it.
    event.swept = True
    return event, to_pico(cost)


def _template(generation: Generation, event: metering_pb2.UsageEvent) -> bytes:
    """The event without what the progress carries. The sweep appends the progress's bytes,
    and protobuf parses concatenated messages as their merge, in which a field the later part
    leaves at zero (not serialized) would keep the earlier part's value: so the template holds
    none of those fields, and the progress (always written with it, in the same MULTI/EXEC)
    supplies them whole."""
    rid = generation.hold.reservation.id if generation.hold is not None else ""
    fixed = metering_pb2.UsageEvent()
    fixed.CopyFrom(event)
    for name in ("usage", "cost_usd", "latency_ms"):
        fixed.ClearField(name)
    return template_value(rid, fixed.SerializeToString())


def _progress(event: metering_pb2.UsageEvent, cost_pico: int) -> bytes:
    latest = metering_pb2.UsageEvent(
        usage=event.usage, cost_usd=event.cost_usd, latency_ms=event.latency_ms
    )
    return progress_value(cost_pico, latest.SerializeToString())


def template(generation: Generation) -> bytes:
    """The generation's record, written once: the FAILED event but for its progress."""
    return _template(generation, _failed_event(generation, None)[0])


def progress(generation: Generation, usage: UsageReport | None = None) -> bytes:
    """What changes as it streams: usage, cost and latency (merged over the template);
    ``usage``: its :meth:`~.generation.Generation.final_usage` when the caller has it."""
    return _progress(*_failed_event(generation, usage))


def records(generation: Generation, usage: UsageReport | None = None) -> tuple[bytes, bytes]:
    """A new generation's template and progress, from one event (``usage`` as for
    :func:`progress`)."""
    event, cost_pico = _failed_event(generation, usage)
    return _template(generation, event), _progress(event, cost_pico)


@dataclass(eq=False, slots=True)
class _Tracked:
    generation: Generation
    registered: bool = False
    written: Mark | None = None  # the progress last written


class InFlight:
    """The heartbeat of router ``router_id`` and its generations in flight."""

    def __init__(
        self, liveness: Liveness, router_id: str, interval_seconds: float, ttl_seconds: float
    ) -> None:
        self.router_id = router_id
        self._liveness = liveness
        self._interval = interval_seconds
        self._ttl = ttl_seconds
        self._tracked: dict[str, _Tracked] = {}
        self._gone: set[str] = set()  # records to delete: their event went another way
        self._wake = asyncio.Event()
        self._write: asyncio.Task[bool] | None = None
        self._writing: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None
        self._beaten = False
        self._failing = False

    def track(self, generation: Generation) -> None:
        """A generation started (its first token came): record it soon, in the background."""
        field = generation_field(generation.id, generation.attempt)
        self._tracked[field] = _Tracked(generation)
        self._wake.set()

    def untrack(self, field: str) -> None:
        """Stop updating a generation's records (its event is being published); they stay
        until the event is delivered."""
        self._tracked.pop(field, None)

    async def release(self, field: str) -> None:
        """Stop tracking a generation whose event is being published; returns once no write
        in progress includes it."""
        self.untrack(field)
        write = self._write
        if write is not None and field in self._writing:
            await asyncio.wait({write})

    async def publish(self, deliveries: Sequence[Delivery]) -> None:
        """Add usage events to the outbox and delete their generations' records, atomically
        (records another router process wrote where a delivery names it: a spool replay)."""
        await self._liveness.publish(deliveries)

    def forget_later(self, field: str) -> None:
        """The event went straight to metering: delete the records with the next write."""
        self._gone.add(field)

    def start(self) -> None:
        """Beat at once (the router is registered before it serves: start-up waits for the
        catalog), then every interval."""
        log.info("router liveness", extra={"router_id": self.router_id})
        self._task = asyncio.create_task(self._run(), name="router-heartbeat")

    async def stop(self) -> None:
        """Once the relay has drained: stop beating and leave, so metering's next sweep settles
        whatever is left (a settle dropped while draining) without waiting out the TTL."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush(full=False)
        try:
            if not await self._liveness.leave(self.router_id):
                log.info("router left records to sweep", extra={"router_id": self.router_id})
        except (RedisError, OSError) as error:
            log.warning(
                "router could not leave; its heartbeat expires by itself",
                extra={"router_id": self.router_id, "error": type(error).__name__},
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = last_write = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_beat - loop.time()))
            now = loop.time()
            if now < next_beat:  # woken by new generations: let a batch gather
                await asyncio.sleep(
                    min(max(0.0, last_write + REGISTER_BATCH_SECONDS - now), next_beat - now)
                )
            self._wake.clear()
            full = loop.time() >= next_beat
            if full:
                next_beat = loop.time() + self._interval
            elif self._failing:
                continue  # Redis is unreachable: only heartbeats retry
            last_write = loop.time()
            await self._flush(full=full)

    def _pending(self, full: bool) -> tuple[dict[str, bytes], dict[str, bytes], list[Any]]:
        templates: dict[str, bytes] = {}
        changed: dict[str, bytes] = {}
        written: list[tuple[_Tracked, Mark]] = []
        for field, tracked in self._tracked.items():
            if tracked.registered and not full:
                continue
            mark = _mark(tracked.generation)
            if not tracked.registered:  # the mark's usage: what the mark says was written
                templates[field], changed[field] = records(tracked.generation, mark[1])
            elif mark != tracked.written:
                changed[field] = progress(tracked.generation, mark[1])
            written.append((tracked, mark))
        return templates, changed, written

    async def _flush(self, *, full: bool) -> None:
        """Write new generations, changed progress and deletions (and the heartbeat)."""
        templates, changed, written = self._pending(full)
        gone = set(self._gone)
        if not (full or templates or changed or gone):
            return
        self._writing = frozenset(templates) | frozenset(changed)
        self._write = asyncio.create_task(
            self._liveness.beat(
                self.router_id, self._ttl, templates=templates, progress=changed, gone=gone
            )
        )
        try:
            was_alive = await self._write
        except (RedisError, OSError) as error:
            if not self._failing:
                log.warning(
                    "router heartbeat failed; retrying every interval",
                    extra={"router_id": self.router_id, "error": type(error).__name__},
                )
            self._failing = True
            return
        finally:
            self._write, self._writing = None, frozenset()
        if self._failing:
            log.info("router heartbeat restored", extra={"router_id": self.router_id})
            self._failing = False
        for tracked, mark in written:
            tracked.registered, tracked.written = True, mark
        self._gone -= gone
        if not was_alive and self._beaten:
            # Metering may have swept this router meanwhile: register everything again (the
            # ledger ignores a generation recorded twice; settles count once).
            log.warning("router heartbeat had lapsed", extra={"router_id": self.router_id})
            for tracked in self._tracked.values():
                tracked.registered, tracked.written = False, None
            self._wake.set()
        self._beaten = True
