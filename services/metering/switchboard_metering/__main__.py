"""``python -m switchboard_metering``: serve the metering service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from switchboard_core.config import ConfigError
from switchboard_core.logs import configure
from switchboard_metering.app import create_app
from switchboard_metering.config import SERVICE, MeteringConfig


async def _serve(config: MeteringConfig) -> None:
    server = await create_app(config)
    await server.start()
    await server.run_until_signal()


def main() -> None:
    try:
        config = MeteringConfig.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    configure(SERVICE, config.server.log_level)
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
