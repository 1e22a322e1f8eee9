"""A background job run every so often until stopped, surviving the errors it expects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` every ``interval`` seconds (first after one interval) in a task.

    An exception of the ``expected`` kinds (storage unreachable, say) is logged and the job
    tries again next time; anything else propagates and ends the task, loudly.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        interval: float,
        expected: tuple[type[BaseException], ...],
    ) -> None:
        self.name = name
        self._work = work
        self.interval = interval
        self._expected = expected
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._work()
            except self._expected as error:
                log.warning(
                    "periodic job failed; retrying later",
                    extra={"job": self.name, "error": type(error).__name__},
                )
