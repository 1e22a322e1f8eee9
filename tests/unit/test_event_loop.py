"""SWITCHBOARD_EVENT_LOOP: which event loop a service runs on, read once with the rest of its
settings, and ``switchboard_core.event_loop.run`` running a coroutine on that loop without
changing the process's event-loop policy."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import uvloop

from switchboard_core import event_loop
from switchboard_core.config import EVENT_LOOPS, ConfigError, EnvReader, ServerConfig


def server_config(env: dict[str, str]) -> ServerConfig:
    reader = EnvReader({"SWITCHBOARD_INSECURE_PLAINTEXT": "true", **env})
    config = ServerConfig.read(reader, "router", 50051, 9091)
    reader.finish()
    return config


def test_the_default_is_uvloop() -> None:
    assert server_config({}).event_loop == "uvloop"


@pytest.mark.parametrize("raw", ["uvloop", "UVLOOP", " uvloop "])
def test_uvloop_is_chosen_in_any_case(raw: str) -> None:
    assert server_config({"SWITCHBOARD_EVENT_LOOP": raw}).event_loop == "uvloop"


def test_asyncio_stays_selectable() -> None:
    assert server_config({"SWITCHBOARD_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"


def test_an_unknown_loop_is_refused_naming_the_setting_and_the_choices() -> None:
    with pytest.raises(ConfigError) as refused:
        server_config({"SWITCHBOARD_EVENT_LOOP": "trio"})
    assert refused.value.problems == ["SWITCHBOARD_EVENT_LOOP: one of uvloop, asyncio"]


async def _loop_and_signal() -> tuple[asyncio.AbstractEventLoop, bool]:
    """The running loop, and whether a SIGTERM handler added with ``add_signal_handler`` (as
    ``GrpcServer.run_until_signal`` does) ran when the process got SIGTERM."""
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, got.set)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(got.wait(), timeout=5.0)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return loop, got.is_set()


@pytest.mark.parametrize("name", EVENT_LOOPS)
def test_run_uses_the_named_loop_and_its_signal_handlers(name: str) -> None:
    policy = asyncio.get_event_loop_policy()
    loop, signalled = event_loop.run(_loop_and_signal(), name)
    assert isinstance(loop, uvloop.Loop) == (name == "uvloop")
    assert signalled
    assert loop.is_closed()
    assert asyncio.get_event_loop_policy() is policy  # nothing global changed


def test_run_refuses_an_unknown_loop() -> None:
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        event_loop.loop_factory("trio")
