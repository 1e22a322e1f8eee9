"""Tells routers at once that an API key changed (revoked, limits set, its account's credit).

Routers cache verified keys (:mod:`switchboard_core.verified_cache`). Metering publishes a
*subject* on a Redis channel after each change: ``key:<id>`` (a key revoked or its limits
set), ``account:<id>`` (an account's credit, which every key of it carries) or
``operator:<id>`` (an operator key revoked). Every router listens and evicts only the cached
keys the subject names, so a revoked key or a new limit applies on the next request rather
than after the cache time, and no other key has to go back to metering.

The cache time stays the bound when a message is lost (Redis down): a listener that
(re)subscribes calls ``on_resubscribe``, since it may have missed messages; the router then
marks every cached key due for re-verification (see the cache's module doc for why it does
not drop them). A subscribed connection to a silent Redis looks idle, so the listener pings
every ``PING_SECONDS`` of quiet and resubscribes when no answer comes within
``PONG_TIMEOUT_SECONDS``: a partition is noticed within ~8 s. Publishing is bounded
(``PUBLISH_TIMEOUT_SECONDS``): a silent Redis does not hold the admin call that made the
change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from switchboard_core.periodic import BackgroundTask

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
PUBLISH_TIMEOUT_SECONDS = 1.0
# A subscribed connection quiet this long is pinged; no answer this long after means it is
# lost (a silent Redis).
PING_SECONDS = 5.0
PONG_TIMEOUT_SECONDS = 3.0
KEY = "key"
ACCOUNT = "account"
OPERATOR = "operator"


def key_subject(key_id: str) -> str:
    return f"{KEY}:{key_id}"


def account_subject(account_id: str) -> str:
    return f"{ACCOUNT}:{account_id}"


def operator_subject(key_id: str) -> str:
    return f"{OPERATOR}:{key_id}"


def subject_kind(subject: str) -> str:
    """``key``, ``account``, ``operator``, or what else precedes the first ``:``."""
    return subject.partition(":")[0]


def channel_name(budget_prefix: str) -> str:
    """The channel, under the budget prefix that routers and metering already share."""
    return f"{budget_prefix}key-changes"


async def publish_key_change(
    client: redis.Redis,
    channel: str,
    subject: str,
    *,
    timeout_seconds: float = PUBLISH_TIMEOUT_SECONDS,
) -> None:
    """Announce a change to ``subject`` within ``timeout_seconds``; never raises: the
    routers' cache time bounds a change that could not be announced."""
    try:
        async with asyncio.timeout(timeout_seconds):
            await client.publish(channel, subject)
    except (RedisError, OSError, TimeoutError) as error:
        log.warning(
            "key change not announced; routers apply it within their cache time",
            extra={"error": type(error).__name__, "subject_kind": subject_kind(subject)},
        )


class KeyChangeListener(BackgroundTask):
    """Calls ``on_change(subject)`` for every announced change, and ``on_resubscribe()``
    after every (re)subscription (messages may have been missed while not subscribed)."""

    name = "key-change-listener"

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        on_change: Callable[[str], None],
        on_resubscribe: Callable[[], None],
    ) -> None:
        self._redis = client
        self._channel = channel
        self._on_change = on_change
        self._on_resubscribe = on_resubscribe
        self.subscribed = asyncio.Event()

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)  # sent; confirmed in _listen
                await self._listen(pubsub)
            except (RedisError, OSError) as error:
                self.subscribed.clear()
                log.warning(
                    "key change listener lost redis; retrying",
                    extra={"error": type(error).__name__},
                )
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError) as error:  # a lost connection: nothing to close
                    log.info(
                        "key change listener: closing its redis connection failed",
                        extra={"error": type(error).__name__},
                    )

    async def _listen(self, pubsub: PubSub) -> None:
        """Hand every message to ``on_change``; raise ``ConnectionError`` when a ping gets no
        answer within :data:`PONG_TIMEOUT_SECONDS` (a silent Redis: nothing else would tell a
        subscribed connection from an idle one).

        ``on_resubscribe`` runs when Redis confirms the subscription, not when it is sent: a
        change announced between the two would reach no one, so whatever the caller reloads
        then is read after every later announcement is sure to arrive."""
        heard = time.monotonic()  # when Redis last said anything on this connection
        pinged: float | None = None  # when the unanswered ping went out
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None:
                heard, pinged = now, None
                kind = message.get("type")
                if kind == "message":
                    self._on_change(_text(message.get("data")))
                elif kind == "subscribe":
                    self._on_resubscribe()  # anything may have changed while not listening
                    self.subscribed.set()
            elif pinged is not None and now - pinged > PONG_TIMEOUT_SECONDS:
                raise RedisConnectionError("redis did not answer the listener's ping")
            elif pinged is None and now - heard > PING_SECONDS:
                await pubsub.ping()
                pinged = now


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)
