"""The key-change listener against a real Redis behind the fault proxy: it hands on what is
published, notices a silent Redis by its unanswered ping, and resubscribes once it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as redis

from switchboard_core import key_changes
from switchboard_core.key_changes import KeyChangeListener, publish_key_change
from switchboard_core.redis_client import create_redis
from tests.faults.links import redis_proxy, through


async def _until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_silent_redis_is_noticed_and_the_listener_resubscribes(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_changes, "PING_SECONDS", 1.0)
    monkeypatch.setattr(key_changes, "PONG_TIMEOUT_SECONDS", 1.0)
    proxy = redis_proxy(redis_url)
    client = create_redis(through(proxy, redis_url), timeout=0.5)
    channel = redis_prefix + "key-changes-listener"
    changes: list[str] = []
    resubscribed: list[float] = []
    listener = KeyChangeListener(
        client, channel, changes.append, lambda: resubscribed.append(time.monotonic())
    )
    listener.start()
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        await publish_key_change(redis_client, channel, "key:k1")
        await _until(lambda: changes == ["key:k1"], 5)

        await asyncio.sleep(2.5)  # quiet, but answering its pings: still the same subscription
        assert len(resubscribed) == 1 and listener.subscribed.is_set()

        proxy.set("blackhole")
        noticed = await _until(lambda: not listener.subscribed.is_set(), 6)
        assert noticed < 4  # ping after 1 s of quiet, 1 s for the answer, and a read's second

        proxy.set("pass")
        await _until(listener.subscribed.is_set, 10)
        assert len(resubscribed) >= 2  # the cache is told it may have missed messages
        await publish_key_change(redis_client, channel, "account:a1")
        await _until(lambda: changes[-1:] == ["account:a1"], 5)
    finally:
        await listener.stop()
        await client.aclose()
        proxy.stop()


async def test_subscribed_means_redis_has_the_subscription(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """``on_resubscribe`` (where callers reload what may have changed) and ``subscribed`` come
    once Redis confirmed the subscription, not when it was sent: over a slow link an
    announcement made in between would otherwise reach no one and the reload would miss it."""
    proxy = redis_proxy(redis_url)
    proxy.set("latency", latency=0.3)
    client = create_redis(through(proxy, redis_url), timeout=2.0)
    channel = redis_prefix + "key-changes-confirmed"
    reloads: list[float] = []
    listener = KeyChangeListener(
        client, channel, lambda subject: None, lambda: reloads.append(time.monotonic())
    )
    listener.start()
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        listening = await redis_client.pubsub_numsub(channel)
        assert listening == [(channel.encode(), 1)]  # Redis knew of the listener by then
        assert len(reloads) == 1
    finally:
        await listener.stop()
        await client.aclose()
        proxy.stop()
