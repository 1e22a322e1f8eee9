"""A router stopping gives the spool one last replay, bounded: a destination that does not
answer leaves the entry spooled for the next process, and the stop says so in a log line."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from switchboard_router.spool import Replayer, Spool


async def test_a_last_replay_that_runs_out_of_time_is_logged_and_keeps_the_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = await Spool.open(tmp_path)
    try:
        await spool.put("usage", b"event")
        answered = asyncio.Event()

        async def never_answers(_body: bytes) -> bool:
            await answered.wait()
            return True

        replayer = Replayer(spool, {"usage": never_answers}, interval=3600)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="switchboard_router.spool"):
            await replayer.finish(seconds=0.2)
        assert time.monotonic() - started < 2.0
        assert "last replay before stopping did not finish" in caplog.text
        assert [r.__dict__.get("error") for r in caplog.records] == ["TimeoutError"]
        assert await spool.depth() == 1  # leased, not lost: the next process replays it
    finally:
        spool.close()


async def test_a_last_replay_that_delivers_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = await Spool.open(tmp_path)
    try:
        await spool.put("usage", b"event")
        delivered: list[bytes] = []

        async def accepts(body: bytes) -> bool:
            delivered.append(body)
            return True

        with caplog.at_level(logging.WARNING, logger="switchboard_router.spool"):
            await Replayer(spool, {"usage": accepts}, interval=3600).finish(seconds=2.0)
        assert delivered == [b"event"]
        assert await spool.depth() == 0
        assert not caplog.records
    finally:
        spool.close()
