"""Tells routers at once that an API key changed (revoked, limits set, its account's credit).

Routers cache verified keys for ``SWITCHBOARD_KEY_CACHE_SECONDS``. Metering publishes a
message on a Redis channel after each change; every router listens and drops its cache, so a
revoked key or a new limit applies on the next request rather than after the cache time. The
cache time stays the bound when a message is lost (Redis down): a listener that lost its
connection drops its cache again when it is back, since it may have missed messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from switchboard_core.periodic import BackgroundTask

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


def channel_name(budget_prefix: str) -> str:
    """The channel, under the budget prefix that routers and metering already share."""
    return f"{budget_prefix}key-changes"


async def publish_key_change(client: redis.Redis, channel: str, subject: str) -> None:
    """Announce a change to ``subject`` (``key:<id>`` or ``account:<id>``); never raises: the
    routers' cache time bounds a change that could not be announced."""
    try:
        await client.publish(channel, subject)
    except (RedisError, OSError) as error:
        log.warning(
            "key change not announced; routers apply it within their cache time",
            extra={"error": type(error).__name__},
        )


class KeyChangeListener(BackgroundTask):
    """Calls ``on_change`` for every announced change, and after every reconnection."""

    name = "key-change-listener"

    def __init__(self, client: redis.Redis, channel: str, on_change: Callable[[], None]) -> None:
        self._redis = client
        self._channel = channel
        self._on_change = on_change
        self.subscribed = asyncio.Event()

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._on_change()  # anything may have changed while we were not listening
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_change()
            except (RedisError, OSError) as error:
                self.subscribed.clear()
                log.warning(
                    "key change listener lost redis; retrying",
                    extra={"error": type(error).__name__},
                )
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
