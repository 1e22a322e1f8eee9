"""Run a service's main coroutine on the event loop its settings name (SWITCHBOARD_EVENT_LOOP).

``asyncio`` (the standard library's selector loop, the default) or ``uvloop`` (libuv, in C:
the router spends 2-8% less CPU per completion on it, issue 12's measurements). uvloop is not
the default because of a fault path: a write to a transport already closed raises
``RuntimeError`` on uvloop (MagicStack/uvloop#506, open) where asyncio drops it, and redis-py
does not map that to a ``ConnectionError``, so a Redis connection refused mid-write escapes
the handlers written for connection errors (the short chaos run caught it in metering's
outbox: ``metering-redis-refuse``). The loop is made by
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
