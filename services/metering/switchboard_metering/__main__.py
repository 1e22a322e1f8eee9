"""``python -m switchboard_metering``: serve the metering service until SIGTERM/SIGINT.

``python -m switchboard_metering reconcile [--fix]`` recomputes the usage rollups from the
ledger and prints every difference (exit status 1 when there are any and ``--fix`` is off).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from switchboard_core.config import ConfigError
from switchboard_core.db import create_pool
from switchboard_core.logs import configure
from switchboard_metering.app import create_app
from switchboard_metering.config import SERVICE, MeteringConfig
from switchboard_metering.reconcile import duplicates, reconcile


async def _serve(config: MeteringConfig) -> None:
    server = await create_app(config)
    await server.start()
    await server.run_until_signal()


async def _reconcile(config: MeteringConfig, fix: bool) -> int:
    pool = await create_pool(config.database_url)
    try:
        differences = await reconcile(pool, fix=fix)
        twice = await duplicates(pool)
    finally:
        await pool.close()
    for difference in differences:
        print(difference)
    verdict = "fixed" if fix else "found"
    print(f"{len(differences)} differences {verdict} between the ledger and the rollups")
    for duplicate in twice:
        print(duplicate)
    print(f"{len(twice)} generation attempts recorded more than once")
    return 1 if (differences and not fix) or twice else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m switchboard_metering")
    commands = parser.add_subparsers(dest="command")
    check = commands.add_parser("reconcile", help="recompute rollups from the ledger and compare")
    check.add_argument("--fix", action="store_true", help="replace the rollups with the ledger's")
    args = parser.parse_args()
    try:
        config = MeteringConfig.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    configure(SERVICE, config.server.log_level)
    if args.command == "reconcile":
        sys.exit(asyncio.run(_reconcile(config, args.fix)))
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
