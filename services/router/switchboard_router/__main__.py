"""``python -m switchboard_router``: serve the completion API until SIGTERM."""

from __future__ import annotations

import sys

from switchboard_core import event_loop
from switchboard_core.config import ConfigError
from switchboard_core.logs import configure
from switchboard_router.app import create_app
from switchboard_router.config import RouterConfig


async def serve(config: RouterConfig) -> None:
    server = await create_app(config)
    await server.start()
    await server.run_until_signal()


def main() -> int:
    try:
        config = RouterConfig.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    configure("router", config.server.log_level)
    event_loop.run(serve(config), config.server.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
