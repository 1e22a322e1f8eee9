"""``python -m switchboard_router``: serve the completion API until SIGTERM.

With ``SWITCHBOARD_WORKERS`` above 1 (or ``auto``) this process supervises that many router
processes sharing the ports (:mod:`switchboard_core.workers`); nothing of the router, and no
gRPC, is imported before that choice, so each worker starts in a fresh interpreter.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from switchboard_core.workers import Worker, serve_or_supervise

if TYPE_CHECKING:
    from switchboard_router.config import RouterConfig


async def serve(config: RouterConfig, worker: Worker | None = None) -> None:
    from switchboard_core.heap import freeze_startup_heap
    from switchboard_router.app import create_app

    server = await create_app(config)
    await server.start(worker=worker)
    freeze_startup_heap()  # full collections skip what start-up made (switchboard_core.heap)
    await server.run_until_signal()


def run(worker: Worker) -> int:
    """Serve as ``worker`` until SIGTERM/SIGINT; 2 when the settings are bad."""
    from switchboard_core import event_loop
    from switchboard_core.config import ConfigError
    from switchboard_core.logs import configure
    from switchboard_router.config import RouterConfig

    try:
        config = RouterConfig.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    configure("router", config.server.log_level)
    event_loop.run(serve(config, worker), config.server.event_loop)
    return 0


def main() -> int:
    return serve_or_supervise("router", run)


if __name__ == "__main__":
    sys.exit(main())
