"""``python -m switchboard_catalog``: serve the catalog until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys

from switchboard_catalog.app import create_app
from switchboard_catalog.config import SERVICE, CatalogConfig
from switchboard_catalog.seed import SeedError
from switchboard_core import event_loop
from switchboard_core.config import ConfigError
from switchboard_core.logs import configure

log = logging.getLogger("switchboard_catalog")


async def serve(config: CatalogConfig) -> None:
    server = await create_app(config)
    await server.start()
    await server.run_until_signal()


def main() -> None:
    try:
        config = CatalogConfig.from_env()
    except ConfigError as error:
        sys.stderr.write(f"switchboard_catalog: {error}\n")
        raise SystemExit(2) from None
    configure(SERVICE, config.server.log_level)
    try:
        event_loop.run(serve(config), config.server.event_loop)
    except SeedError as error:
        log.error("cannot start: %s", error)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
