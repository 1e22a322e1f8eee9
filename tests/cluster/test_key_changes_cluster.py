"""Key-change announcements on a real Redis Cluster: metering publishes on one node, a
router's listener subscribed through another node's connection hears it (classic pub/sub is
broadcast to every node)."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from switchboard_core.key_changes import KeyChangeListener, channel_name, publish_key_change


async def test_a_published_change_reaches_a_subscribed_router(
    cluster: redis.Redis, prefix: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    channel = channel_name(prefix)
    listener = KeyChangeListener(cluster, channel, heard.put_nowait, lambda: None)
    listener.start()
    try:
        async with asyncio.timeout(5):
            await listener.subscribed.wait()
            await publish_key_change(cluster, channel, "key:k1")
            assert await heard.get() == "key:k1"
    finally:
        await listener.stop()
