"""A router draining waits for its usage writes; one that failed is logged, not swallowed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from switchboard_router.billing import Billing


async def test_a_usage_write_that_fails_while_draining_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # drain() touches only the tasks it tracks: no sink or admission is reached.
    billing = Billing(cast(Any, None), cast(Any, None))
    written = asyncio.Event()

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise OSError("disk gone")

    async def succeeds() -> None:
        await asyncio.sleep(0.01)
        written.set()

    billing.spawn(fails())
    billing.spawn(succeeds())
    with caplog.at_level(logging.ERROR, logger="switchboard_router.billing"):
        await billing.drain()
    assert written.is_set()
    [record] = caplog.records
    assert record.getMessage() == "usage write failed while draining"
    assert record.exc_info is not None and isinstance(record.exc_info[1], OSError)
