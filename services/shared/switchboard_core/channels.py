"""gRPC client channels between services: mutual TLS with the calling service's certificate,
or, where TLS is explicitly off, plaintext carrying the service's service key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from switchboard_core.tls import TlsConfig, call_metadata

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 1),
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
    """A channel from this service to another one at ``address``."""
    credentials = tls.channel_credentials()
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(
        address, options=CHANNEL_OPTIONS, interceptors=_adding(call_metadata(tls))
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
            address, options=CHANNEL_OPTIONS, interceptors=_adding(metadata)
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
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
