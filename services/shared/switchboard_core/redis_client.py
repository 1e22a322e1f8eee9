"""Redis access through ``redis.asyncio``, with explicit socket, connect and retry budgets.

redis-py nests its retries: a command is attempted ``1 + retries`` times, each attempt on a
connection that must (re)connect waits up to the socket timeout for the handshake, and a
connection idle past ``health_check_interval`` first sends a PING retried the same way, each
try on a fresh connection. With the former settings (two retries on connection errors and
timeouts, 5 s socket timeouts) a silent Redis held a script or a MULTI 15 s on a pooled
connection and 45 s (9 timeouts) once the pool's connections were idle past their health
check (tests/integration/test_redis_deadlines.py counts the attempts against a blackholed
proxy). So here:

- only connection errors are retried (once, 10-50 ms later: a connection Redis dropped
  when it restarted, or an idle socket closed); a timeout means a silent peer, and trying
  again only waits again. Connect and handshake are bounded by ``connect_timeout`` and
  ``timeout``, so a call waits at most about their sum (a fresh connection) even unbounded;
- a caller that must answer quickly wraps its calls in a :class:`RedisDeadline`: one
  ``asyncio.timeout`` over the whole call, retries included, and a short memo of an outage so
  that a burst of requests does not each hold a pooled connection for the full deadline.

Cutting a command short is safe: redis-py disconnects a connection whose read or write is
interrupted (any ``BaseException``, so the cancellation too) before it goes back to the pool,
so the next command on the pool never reads the stale reply of the one that was cut (tested).

Every client made here writes through connections that report a write on a connection already
closed as a ``ConnectionError`` on uvloop too (:class:`_ClosedTransportAsConnectionError`), so
the retry above and every handler of connection errors see what asyncio's loop gives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

T = TypeVar("T")
C = TypeVar("C", bound=AbstractConnection)

RETRIES = 1
# Socket timeout when the caller does not say: longer than any blocking read.
DEFAULT_TIMEOUT_SECONDS = 5.0
# After a failure, request-path calls fail at once this long (then one call probes).
DOWN_MEMO_SECONDS = 1.0
# The router's deadline on a request-path call (SWITCHBOARD_REDIS_TIMEOUT_SECONDS).
DEFAULT_DEADLINE_SECONDS = 0.5


# uvloop's text for an operation on a closed handle ("unable to perform operation on
# <TCPTransport closed=True ...>; the handler is closed"); matched as the end of the message.
_UVLOOP_CLOSED = "the handler is closed"


class _ClosedTransportAsConnectionError(AbstractConnection):
    """Turns uvloop's ``RuntimeError`` for a write on a closed transport into the
    ``ConnectionError`` asyncio's loop leads to.

    When Redis resets a connection (a restart, a refused link) the loop closes its transport.
    A command written on it next finds, on asyncio, the lost connection when it drains
    (``ConnectionResetError``, which redis-py maps to ``ConnectionError``, retries on a fresh
    connection and every handler expects); on uvloop the write itself raises ``RuntimeError``
    (MagicStack/uvloop#506), which redis-py lets through, so it escaped the handlers (the
    short chaos run's ``metering-redis-refuse`` found it in metering's outbox consumer).
    ``send_packed_command`` is redis-py's one write path (commands, pipelines, the health
    check's PING, pub/sub); redis-py has already disconnected the connection when it lets the
    error out (it does for any exception of a write), so only the error's type changes here.
    Only that uvloop error is mapped: any other ``RuntimeError`` is a bug and goes through.
    tests/unit/test_redis_uvloop.py resets a connection under a client on uvloop."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as error:
            if type(error) is not RuntimeError or not str(error).endswith(_UVLOOP_CLOSED):
                raise
            # The words redis-py gives asyncio's ConnectionResetError("Connection lost").
            raise redis_errors.ConnectionError(
                "Error UNKNOWN while writing to socket. Connection lost."
            ) from error


class _TcpConnection(_ClosedTransportAsConnectionError, Connection):
    """``redis://``"""


class _TlsConnection(_ClosedTransportAsConnectionError, SSLConnection):
    """``rediss://``"""


class _UnixConnection(_ClosedTransportAsConnectionError, UnixDomainSocketConnection):
    """``unix://``"""


_MAPPED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TcpConnection,
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


def _mapped(connection_class: type[C]) -> type[C]:
    """The class above that writes like ``connection_class`` (the one redis-py picks for a
    URL's scheme), of which it is a subclass."""
    return cast(type[C], _MAPPED[connection_class])


class _Cluster(RedisCluster):
    """A cluster client that learns the cluster's map before its first command's routing.

    redis-py 8.1 routes a command (asking the startup node for the command's keys when it
    does not know them yet) before it initializes; commands issued together on a fresh client
    then use the startup node's connections while initialization replaces that node, and fail
    (``'NoneType' object has no attribute 'writelines'``, or a ConnectionError). Initializing
    first, under the client's own lock, makes the first burst safe (tests/cluster).

    Its node connections are :class:`_ClosedTransportAsConnectionError` ones too: RedisCluster
    takes no ``connection_class`` (it picks ``Connection`` or ``SSLConnection`` itself), so the
    class is swapped in the options every node is made from (``connection_kwargs``, which its
    nodes manager shares) and in the startup nodes already made from them. A node's pool and
    pub/sub make their connections from the node's class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        connection_class = _mapped(self.connection_kwargs["connection_class"])
        self.connection_kwargs["connection_class"] = connection_class
        for node in self.startup_nodes:
            node.connection_class = connection_class

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    def pubsub(
        self,
        node: ClusterNode | None = None,
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> ClusterPubSub:
        return _ClusterPubSub(self, node=node, host=host, port=port, **kwargs)


class _ClusterPubSub(ClusterPubSub):
    """Its first ``SUBSCRIBE`` picks a node by the channel's slot, from a map of slots that
    only an initialized client has (redis-py 8.1 raises ``KeyError`` on a fresh one)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self.cluster._initialize:
            await self.cluster.initialize()
        return await super().execute_command(*args, **kwargs)


def create_redis(
    url: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    connect_timeout: float | None = None,
    retries: int = RETRIES,
    max_connections: int = 256,
    cluster: bool = False,
) -> redis.Redis:
    """A client whose every read waits at most ``timeout`` (give more than the longest
    blocking command the caller issues) and every TCP connect ``connect_timeout`` (default:
    ``timeout``); connection errors are retried ``retries`` times, timeouts never.

    ``cluster`` (``SWITCHBOARD_REDIS_CLUSTER``): a Redis Cluster client, ``url`` naming any
    node, with the same budgets (``max_connections`` per node). It routes each command, script
    and MULTI by its keys' hash slot, and splits a plain pipeline by node; every script and
    MULTI here touches one slot (the layouts in :mod:`switchboard_core.budget`,
    :mod:`switchboard_core.liveness`, :mod:`switchboard_core.rate_limits`). Besides connection
    errors it retries a cluster that is down for a moment (a failover), after refreshing its
    map of slots; MOVED and ASK redirections are followed as redis-py does. It offers every
    command the stores use, so it is typed as the plain client they take (tests/cluster runs
    them against a real cluster)."""
    retry = Retry(
        ExponentialWithJitterBackoff(cap=0.05, base=0.01),
        retries,
        supported_errors=(redis_errors.ConnectionError,),
    )
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": timeout if connect_timeout is None else connect_timeout,
        "socket_timeout": timeout,
        "health_check_interval": 30,
        "max_connections": max_connections,
        "retry": retry,
    }
    if cluster:
        retry.update_supported_errors([redis_errors.ClusterDownError])
        return cast(redis.Redis, _Cluster.from_url(url, **options))
    client = redis.Redis.from_url(url, **options)
    # The class redis-py picked for the URL's scheme (the URL's choice beats a
    # ``connection_class`` option), swapped before the pool makes its first connection.
    pool = client.connection_pool
    pool.connection_class = _mapped(pool.connection_class)
    return client


class RedisKnownDown(redis_errors.ConnectionError):
    """Refused without asking Redis: a call failed less than the memo's time ago."""


# (operation, cause): cause is "deadline" (the call ran out of time), "error" (Redis refused
# or dropped it) or "known_down" (failed at once by the memo).
FailureHook = Callable[[str, str], None]


class RedisDeadline:
    """Bounds the calls a client is waiting on: each runs at most ``seconds``, retries
    included, and raises a ``redis`` ``TimeoutError`` when cut.

    After a call fails for want of Redis (a timeout or a connection error; not a refusal such
    as a script error), calls fail at once with :class:`RedisKnownDown` for ``down_seconds``:
    without that memo each request of a burst would hold a pooled connection (and, against a
    silent Redis, a fresh TCP connection) for the whole deadline. When the memo lapses one call
    probes (the others keep failing at once until it answers); its success clears the memo.
    """

    def __init__(
        self,
        seconds: float = DEFAULT_DEADLINE_SECONDS,
        *,
        down_seconds: float = DOWN_MEMO_SECONDS,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.seconds = seconds
        self._down_seconds = down_seconds
        self._on_failure = on_failure
        self._down_until = 0.0

    @property
    def known_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _remember_down(self) -> None:
        if self._down_seconds > 0:  # 0: no memo, every call asks Redis
            self._down_until = time.monotonic() + self._down_seconds

    def _fail(self, operation: str, cause: str) -> None:
        if self._on_failure is not None:
            self._on_failure(operation, cause)

    async def run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` within the deadline; ``operation`` names it for the failure hook."""
        now = time.monotonic()
        if now < self._down_until:
            self._fail(operation, "known_down")
            raise RedisKnownDown("redis failed moments ago; not asked again yet")
        probing = self._down_until > 0.0
        if probing:  # the others fail at once while this call finds out
            self._down_until = now + self.seconds
        try:
            async with asyncio.timeout(self.seconds):
                result = await call()
        except TimeoutError:
            self._remember_down()
            self._fail(operation, "deadline")
            raise redis_errors.TimeoutError(
                f"redis did not answer within {self.seconds:g} s"
            ) from None
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
            self._remember_down()
            self._fail(operation, "error")
            raise
        except BaseException:
            if probing:  # a refusal is an answer: Redis is up
                self._down_until = 0.0
            raise
        self._down_until = 0.0
        return result
