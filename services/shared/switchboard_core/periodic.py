"""Background tasks a service starts and stops with itself; a job run every so often."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class BackgroundTask:
    """A task running :meth:`_run` from :meth:`start` until :meth:`stop` cancels it."""

    name = "background"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        raise NotImplementedError


class Periodic(BackgroundTask):
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

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._work()
            except self._expected as error:
                log.warning(
                    "periodic job failed; retrying later",
                    extra={"job": self.name, "error": type(error).__name__},
                )
