"""gRPC client channels between services: mutual TLS with the calling service's certificate,
or, where TLS is explicitly off, plaintext carrying the service's service key.

Channels between services notice a silent peer and come back promptly (docs/RELIABILITY.md):

- **Keepalive**: a ping every ``KEEPALIVE_SECONDS``, with or without calls in flight and
  with or without data (``grpc.http2.max_pings_without_data`` 0: no cap); an answer not
  back within ``KEEPALIVE_TIMEOUT_SECONDS`` (``grpc.keepalive_timeout_ms``, and
  ``grpc.http2.ping_timeout_ms`` for a ping already in flight) closes the connection,
  failing its calls (``UNAVAILABLE``) and the long-lived streams on it (the catalog watch).
  A half-open connection is so noticed within ``KEEPALIVE_SECONDS +
  KEEPALIVE_TIMEOUT_SECONDS`` (7 s). Servers accept pings this often
  (``switchboard_core.server.SERVER_OPTIONS``); otherwise they would answer GOAWAY
  ``too_many_pings``. The interval is fixed here rather than a setting: every service's
  channels and servers must agree on it.
- **Reconnecting** (gRPC core's connection backoff, doc/connection-backoff.md in grpc/grpc):
  ``grpc.initial_reconnect_backoff_ms`` is the wait after the first failed attempt (default
  1 s), growing 1.6 times per attempt, with jitter, up to ``grpc.max_reconnect_backoff_ms``
  (default 120 s); ``grpc.min_reconnect_backoff_ms`` is in fact the *minimum connect
  timeout* (default 20 s): how long one attempt may take. A link that comes back is used
  within about ``MAX_RECONNECT_BACKOFF_MS`` after a refusal, and within
  ``CONNECT_TIMEOUT_MS`` after a silent partition (the attempt caught by it is given up).

Clients of Switchboard (:func:`client_channel`: the CLI, tools) keep gRPC's gentler
defaults for reconnecting, over networks slower than a data centre's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from switchboard_core.rpc_tracing import client_interceptors
from switchboard_core.tls import TlsConfig, call_metadata

KEEPALIVE_SECONDS = 5.0
KEEPALIVE_TIMEOUT_SECONDS = 2.0
INITIAL_RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 1_000
CONNECT_TIMEOUT_MS = 3_000

_COMMON_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 1),
]
# Between services.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *_COMMON_OPTIONS,
    ("grpc.keepalive_time_ms", int(KEEPALIVE_SECONDS * 1000)),
    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000)),
    # Any ping (keepalive or gRPC's own flow-control probes) unanswered this long closes the
    # connection: a probe already in flight defers keepalive's, and waits 1 minute otherwise.
    ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000)),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
]
# From clients of Switchboard.
CLIENT_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *_COMMON_OPTIONS,
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class _WithMetadata:
    """Adds fixed metadata (the service key) to every call that does not carry its own."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        given = list(details.metadata or ())
        names = {key for key, _ in given}
        extra = [(k, v) for k, v in self._metadata if k not in names]
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*given, *extra),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call type it implements only, so each type
# needs a class of its own.
class _UnaryWithMetadata(_WithMetadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamWithMetadata(_WithMetadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def _adding(metadata: Sequence[tuple[str, str]]) -> Any:
    """Interceptors adding ``metadata`` to unary and server-streaming calls (None if empty)."""
    if not metadata:
        return None
    return [_UnaryWithMetadata(metadata), _StreamWithMetadata(metadata)]


def service_channel(address: str, tls: TlsConfig) -> grpc.aio.Channel:
    """A channel from this service to another one at ``address``; its calls carry the
    trace context when tracing is on (set it up first: :func:`switchboard_core.tracing.setup`)."""
    credentials = tls.channel_credentials()
    traced = client_interceptors()  # none when tracing is off
    if credentials is not None:
        return grpc.aio.secure_channel(
            address, credentials, options=CHANNEL_OPTIONS, interceptors=traced or None
        )
    interceptors = [*(_adding(call_metadata(tls)) or ()), *traced]
    return grpc.aio.insecure_channel(
        address, options=CHANNEL_OPTIONS, interceptors=interceptors or None
    )


def client_channel(
    address: str,
    *,
    ca: bytes | None = None,
    cert: bytes | None = None,
    key: bytes | None = None,
    bearer: str | None = None,
    plaintext: bool = False,
) -> grpc.aio.Channel:
    """A channel for a client of Switchboard (the CLI, tools, tests): TLS trusting ``ca``
    (the system roots when None), with a client certificate when ``cert`` and ``key`` are
    given (the catalog's and metering's ports ask for one), sending ``bearer`` as
    ``authorization: Bearer`` on every call. ``plaintext`` only for servers configured so."""
    if plaintext:
        metadata = (("authorization", f"Bearer {bearer}"),) if bearer else ()
        return grpc.aio.insecure_channel(
            address, options=CLIENT_CHANNEL_OPTIONS, interceptors=_adding(metadata)
        )
    if bool(cert) != bool(key):  # gRPC's core aborts the process on half a key pair
        raise ValueError("a client certificate needs its key, and a key its certificate")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key or None, certificate_chain=cert or None
    )
    if bearer:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(bearer)
        )
    return grpc.aio.secure_channel(address, credentials, options=CLIENT_CHANNEL_OPTIONS)
