"""The router's in-flight writer against a fake Redis side: what it writes, when, and the one
ordering that matters (a published generation's records are never written back)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError

from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import Limits, Reservation, to_pico
from switchboard_core.config import EnvReader
from switchboard_core.liveness import Liveness, generation_field, read_heartbeat
from switchboard_core.money import format_usd
from switchboard_core.pricing import PriceSheet
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, Message, Role
from switchboard_router.catalog_cache import Route
from switchboard_router.generation import Generation, Hold, cost_of, new_generation_id
from switchboard_router.inflight import InFlight, progress, template

ROUTE = Route(
    endpoint_id="demo:m",
    model_id="demo/m",
    provider_id="demo",
    api_format=1,
    base_url="http://demo.invalid/v1",
    dialect="demo",
    upstream_model="m",
    price=PriceSheet.flat("1", "2"),
    context_length=8192,
    max_completion_tokens=1000,
    supported_parameters=frozenset(),
)
REQUEST = CompletionRequest(model="demo/m", messages=(Message.of(Role.USER, "hi"),))


def generation(reservation: Reservation | None = None) -> Generation:
    now = time.monotonic()
    return Generation(
        id=new_generation_id(),
        attempt=0,
        caller=Caller("key_1", "acct", Limits(total=Decimal(1))),
        request=REQUEST,
        route=ROUTE,
        started=now,
        create_time=time.time(),
        streamed=True,
        first_event_at=now,
        hold=Hold(reservation) if reservation is not None else None,
    )


def field(g: Generation) -> str:
    return generation_field(g.id, g.attempt)


class FakeLiveness:
    """Records each write; a write waits while ``open`` is clear."""

    def __init__(self) -> None:
        self.writes: list[tuple[set[str], set[str], set[str]]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.alive = False
        self.fail = False

    async def beat(
        self,
        router_id: str,
        ttl_seconds: float,
        *,
        templates: Mapping[str, bytes],
        progress: Mapping[str, bytes],
        gone: Collection[str] = (),
    ) -> bool:
        await self.open.wait()
        if self.fail:
            raise RedisConnectionError("down")
        self.writes.append((set(templates), set(progress), set(gone)))
        was, self.alive = self.alive, True
        return was

    async def leave(self, router_id: str) -> bool:
        return True


async def until(check: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def writer(fake: FakeLiveness, interval: float = 60.0) -> InFlight:
    return InFlight(cast(Liveness, fake), "router-1", interval, ttl_seconds=10 * interval)


async def test_a_publish_waits_out_a_write_that_includes_its_generation() -> None:
    fake = FakeLiveness()
    inflight = writer(fake)
    inflight.start()
    await until(lambda: len(fake.writes) == 1)  # the first heartbeat, at once
    fake.open.clear()
    streaming, other = generation(), generation()
    inflight.track(streaming)
    await asyncio.sleep(0.1)  # its registration is being written (and held up)
    waiting = asyncio.create_task(inflight.release(field(streaming)))
    await inflight.release(field(other))  # not in that write: no wait
    await asyncio.sleep(0.05)
    assert not waiting.done()
    fake.open.set()
    await waiting
    assert fake.writes[1][:2] == ({field(streaming)}, {field(streaming)})
    inflight.track(other)
    await until(lambda: len(fake.writes) == 3)
    await inflight.stop()
    assert field(streaming) not in fake.writes[2][0]  # released: never written again


async def test_heartbeats_write_only_changed_progress_and_deletions() -> None:
    fake = FakeLiveness()
    inflight = writer(fake, interval=0.05)
    streaming = generation(Reservation("r1", "key_1", "acct", Decimal("0.01")))
    inflight.start()
    inflight.track(streaming)
    await until(lambda: any(t for t, _, _ in fake.writes))
    writes = len(fake.writes)
    await until(lambda: len(fake.writes) >= writes + 2)
    assert not any(t or p for t, p, _ in fake.writes[writes:])  # nothing changed
    streaming.text_chars = 40
    await until(lambda: any(p for _, p, _ in fake.writes[writes:]))
    inflight.forget_later("gone:0")  # its event went straight to metering
    await until(lambda: any(g for _, _, g in fake.writes[writes:]))
    await inflight.stop()
    assert template(streaming).startswith(b"r1 ")
    head, _, body = progress(streaming).partition(b" ")
    latest = metering_pb2.UsageEvent.FromString(body)
    cost = cost_of(ROUTE, streaming.final_usage())
    assert (int(head), latest.usage.completion_tokens) == (to_pico(cost), 10)
    assert latest.cost_usd == format_usd(cost) and latest.usage.estimated


async def test_after_a_lapse_every_generation_is_registered_again() -> None:
    fake = FakeLiveness()
    inflight = writer(fake, interval=0.05)
    streaming = generation()
    inflight.start()
    inflight.track(streaming)
    await until(lambda: any(t for t, _, _ in fake.writes))
    fake.alive = False  # the heartbeat expired (a sweep may have deleted the records)
    writes = len(fake.writes)
    await until(lambda: any(field(streaming) in t for t, _, _ in fake.writes[writes:]))
    await inflight.stop()


async def test_redis_down_is_retried_by_heartbeats_only() -> None:
    fake = FakeLiveness()
    fake.fail = True
    inflight = writer(fake, interval=0.2)
    inflight.start()
    await asyncio.sleep(0.05)
    for _ in range(10):  # new generations do not hammer a Redis that is down
        inflight.track(generation())
        await asyncio.sleep(0.01)
    fake.fail = False
    await until(lambda: len(fake.writes) == 1)
    assert len(fake.writes[0][0]) == 10  # all registered by the next heartbeat
    await inflight.stop()


def test_a_heartbeat_ttl_shorter_than_two_heartbeats_is_refused() -> None:
    reader = EnvReader(
        {
            "SWITCHBOARD_ROUTER_HEARTBEAT_SECONDS": "2",
            "SWITCHBOARD_ROUTER_HEARTBEAT_TTL_SECONDS": "3",
        }
    )
    assert read_heartbeat(reader) == (2.0, 3.0)
    assert reader.problems == [
        "SWITCHBOARD_ROUTER_HEARTBEAT_TTL_SECONDS: must be at least twice the heartbeat interval"
    ]
    assert read_heartbeat(EnvReader({})) == (2.0, 10.0)  # the defaults: swept within ~15 s


def test_the_swept_event_is_the_latest_progress_even_where_a_count_fell_to_zero() -> None:
    """The sweep appends the progress's bytes to the template's: a count that was non-zero
    when the template was written and is zero now must come out zero, not the old value."""
    from switchboard_router.canonical import PromptUsage, UsageReport

    g = generation()
    g.prompt = PromptUsage(prompt_tokens=40, cached_tokens=30)
    written_first = template(g)  # registered while the early counts said 30 cached
    g.usage = UsageReport(prompt_tokens=40, completion_tokens=7)  # the final report: 0 cached
    latest = progress(g)
    swept = metering_pb2.UsageEvent.FromString(
        written_first.split(b" ", 1)[1] + latest.split(b" ", 1)[1]
    )
    assert swept.usage.cached_tokens == 0
    assert (swept.usage.prompt_tokens, swept.usage.completion_tokens) == (40, 7)
    assert swept.cost_usd == format_usd(cost_of(ROUTE, g.usage))
    assert swept.generation_id == g.id
