"""The periodic job runner: it survives the errors it expects, and stops when told."""

from __future__ import annotations

import asyncio

import pytest

from switchboard_core.periodic import Periodic


async def test_an_expected_error_is_survived_and_stop_ends_the_job() -> None:
    calls = 0
    third = asyncio.Event()

    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()
        if calls == 1:
            raise ConnectionRefusedError("storage is down")

    job = Periodic("test-job", work, 0.001, (OSError,))
    job.start()
    await asyncio.wait_for(third.wait(), 5)
    await job.stop()
    stopped_at = calls
    await asyncio.sleep(0.01)
    assert calls == stopped_at  # nothing runs after stop
    await job.stop()  # stopping twice is harmless


async def test_an_unexpected_error_ends_the_task_loudly() -> None:
    async def work() -> None:
        raise KeyError("a bug")

    job = Periodic("test-job", work, 0.001, (OSError,))
    job.start()
    task = job._task
    assert task is not None
    with pytest.raises(KeyError):
        await asyncio.wait_for(task, 5)
