"""Where the services are, the channel to one of them and the metadata the router wants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

DEFAULT_ADDRESSES = {
    "router": "127.0.0.1:50051",
    "catalog": "127.0.0.1:50052",
    "metering": "127.0.0.1:50053",
}

# Seconds to wait for a unary answer; streams have no deadline (a long answer is fine).
UNARY_TIMEOUT = 30.0
COMPLETION_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Target:
    """One service the command talks to."""

    service: str
    address: str


@asynccontextmanager
async def open_channel(target: Target) -> AsyncIterator[grpc.aio.Channel]:
    """A plaintext channel, closed on exit (connecting happens on the first call)."""
    async with grpc.aio.insecure_channel(target.address) as channel:
        yield channel


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    """The router's authentication metadata."""
    return (("authorization", f"Bearer {api_key}"),)
