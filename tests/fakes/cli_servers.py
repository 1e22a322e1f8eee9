"""Helpers for the CLI tests: in-process fake servers on port 0 and captured output.

The fakes serve TLS with the test process's certificates, and the CLI runs with the variables
that trust them (``SWITCHBOARD_TLS_CA``, and the operator's client certificate), as a user
who sourced ``.devstack/env`` would.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from switchboard_cli.__main__ import run
from switchboard_devstack.pki import OPERATOR
from tests.secure import test_pki


@asynccontextmanager
async def serving(
    add: Callable[[Any, grpc.aio.Server], None], servicer: object
) -> AsyncIterator[str]:
    """Serve ``servicer`` on 127.0.0.1:0 and yield its address."""
    server = grpc.aio.server()
    add(servicer, server)
    cert, key, _ = test_pki().read("metering")
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def rich_status(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    """A ``google.rpc.Status`` with details, as the services' error interceptor builds it."""
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    number = getattr(code_pb2, code.name)
    status = status_pb2.Status(code=number, message=message, details=packed)
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    """Fail the call with ``status`` (what ``abort_with_status`` does, typed)."""
    await context.abort(status.code, status.details, status.trailing_metadata)


class FlushRecorder(io.StringIO):
    """A stdout that remembers what had been written at every flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def tls_env() -> dict[str, str]:
    """The CLI's TLS variables for the test certificates."""
    pki = test_pki()
    return {
        "SWITCHBOARD_TLS_CA": str(pki.ca),
        "SWITCHBOARD_TLS_CERT": str(pki.cert(OPERATOR)),
        "SWITCHBOARD_TLS_KEY": str(pki.key(OPERATOR)),
    }


async def cli(*argv: str, env: dict[str, str] | None = None) -> int:
    """Run the CLI in this event loop with only the TLS variables set, and ``env``."""
    return await run(list(argv), env={**tls_env(), **(env or {})})


class RouterCompletionsOnly:
    """A fake router's answer to the account RPCs a completion test does not serve
    (mix it in before ``RouterServiceServicer``)."""

    async def _unimplemented(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this fake")

    async def GetKey(self, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unimplemented(context)

    async def GetGeneration(
        self, request: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await self._unimplemented(context)

    async def QueryUsage(self, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unimplemented(context)

    async def ListModels(self, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unimplemented(context)
