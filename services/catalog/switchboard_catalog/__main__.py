"""``python -m switchboard_catalog``: serve the catalog until SIGTERM/SIGINT.

The catalog always runs one process: ``SWITCHBOARD_WORKERS`` (router and metering,
:mod:`switchboard_core.workers`) is ignored here, with a warning when it asks for more than one,
so a setting shared by every service (an env file, a Compose anchor) does not silently mean
something else for the catalog.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from switchboard_catalog.app import create_app
from switchboard_catalog.config import SERVICE, CatalogConfig
from switchboard_catalog.seed import SeedError
from switchboard_core import event_loop
from switchboard_core.config import ConfigError, EnvReader
from switchboard_core.heap import freeze_startup_heap
from switchboard_core.logs import configure
from switchboard_core.workers import WORKERS_VAR, read_workers

log = logging.getLogger("switchboard_catalog")


async def serve(config: CatalogConfig) -> None:
    server = await create_app(config)
    await server.start()
    freeze_startup_heap()  # full collections skip what start-up made (switchboard_core.heap)
    await server.run_until_signal()


def warn_about_workers(env: Mapping[str, str] | None = None) -> None:
    """Log a warning when ``SWITCHBOARD_WORKERS`` asks for more than one process (or is not
    a count at all): the catalog runs one."""
    reader = EnvReader(env)
    workers = read_workers(reader)
    if workers > 1 or reader.problems:
        log.warning(
            "SWITCHBOARD_WORKERS is ignored: the catalog runs one process",
            extra={"workers": reader.env.get(WORKERS_VAR)},
        )


def main() -> None:
    try:
        config = CatalogConfig.from_env()
    except ConfigError as error:
        sys.stderr.write(f"switchboard_catalog: {error}\n")
        raise SystemExit(2) from None
    configure(SERVICE, config.server.log_level)
    warn_about_workers()
    try:
        event_loop.run(serve(config), config.server.event_loop)
    except SeedError as error:
        log.error("cannot start: %s", error)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
