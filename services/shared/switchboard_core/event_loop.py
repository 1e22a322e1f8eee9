"""Run a service's main coroutine on the event loop its settings name (SWITCHBOARD_EVENT_LOOP).

``uvloop`` (libuv, in C; the default: the router spends 2-8% less CPU per completion on it,
issue 12's measurements, docs/BENCHMARKS.md) or ``asyncio`` (the standard library's selector
loop, still selectable). uvloop differs on one fault path: a write to a transport already
closed raises ``RuntimeError`` (MagicStack/uvloop#506, open) where asyncio's loop drops it and
reports the lost connection at the drain, and redis-py does not map that ``RuntimeError`` to a
``ConnectionError`` (the short chaos run's ``metering-redis-refuse`` caught it in metering's
outbox). Every Redis client is made by :func:`switchboard_core.redis_client.create_redis`,
whose connections map it (tests/unit/test_redis_uvloop.py). The other clients do not write
on a closed transport: aiohttp checks ``is_closing()`` first, asyncpg refuses calls on a
connection whose transport was lost, grpc.aio does its own I/O. The loop is made by
:class:`asyncio.Runner` with a ``loop_factory``, so nothing global (no event-loop policy)
changes: code that makes its own loop later (tests, ``asyncio.run``) gets the standard one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``name`` (one of switchboard_core.config.EVENT_LOOPS); None:
    asyncio's own."""
    if name == "uvloop":
        import uvloop  # only when chosen: the asyncio loop needs no C extension

        return uvloop.new_event_loop
    if name == "asyncio":
        return None
    raise ValueError(f"unknown event loop {name!r}")


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """``asyncio.run(main)`` on the loop ``name``."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
