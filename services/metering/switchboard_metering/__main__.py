"""``python -m switchboard_metering``: serve the metering service until SIGTERM/SIGINT.

``python -m switchboard_metering reconcile [--fix]`` recomputes the usage rollups from the
ledger and prints every difference (exit status 1 when there are any and ``--fix`` is off).

``python -m switchboard_metering create-operator-key --name NAME --scope SCOPE ...`` creates an
operator key directly in the database (``DATABASE_URL``), for the first operator: it prints
the secret once. Later keys are made with that key through ``CreateOperatorKey``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta

from switchboard_core.config import ConfigError, EnvReader, read_database_url
from switchboard_core.db import create_pool
from switchboard_core.errors import SwitchboardError
from switchboard_core.logs import configure
from switchboard_metering.app import MIGRATIONS, create_app
from switchboard_metering.config import SERVICE, MeteringConfig
from switchboard_metering.operators import bootstrap_operator_key
from switchboard_metering.reconcile import duplicates, reconcile


async def _serve(config: MeteringConfig) -> None:
    server = await create_app(config)
    await server.start()
    await server.run_until_signal()


async def _reconcile(database_url: str, fix: bool) -> int:
    pool = await create_pool(database_url)
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


async def _create_operator_key(database_url: str, args: argparse.Namespace) -> int:
    days = args.expires_in_days
    expires = datetime.now(UTC) + timedelta(days=days) if days > 0 else None
    try:
        key, secret = await bootstrap_operator_key(
            database_url, MIGRATIONS, args.name, args.scope, expires_at=expires
        )
    except SwitchboardError as error:
        print(error.message, file=sys.stderr)
        return 2
    print(f"secret:  {secret}")
    print(f"id:      {key.id}")
    print(f"scopes:  {' '.join(key.scopes)}")
    print("The secret is shown once; keep it in your secret store (SWITCHBOARD_ADMIN_KEY).")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m switchboard_metering")
    commands = parser.add_subparsers(dest="command")
    check = commands.add_parser("reconcile", help="recompute rollups from the ledger and compare")
    check.add_argument("--fix", action="store_true", help="replace the rollups with the ledger's")
    bootstrap = commands.add_parser(
        "create-operator-key", help="create an operator key in the database (the first one)"
    )
    bootstrap.add_argument("--name", default="bootstrap", help="a label for the key")
    bootstrap.add_argument(
        "--scope",
        action="append",
        required=True,
        help="a scope to grant (repeat the option); '*' grants every operator scope",
    )
    bootstrap.add_argument("--expires-in-days", type=int, default=0, help="0: never")
    args = parser.parse_args()
    if args.command is not None:  # the commands against the database need only its URL
        reader = EnvReader()
        database_url = read_database_url(reader)
        try:
            reader.finish()
        except ConfigError as error:
            print(error, file=sys.stderr)
            sys.exit(2)
        configure(SERVICE, "WARNING")
        if args.command == "reconcile":
            sys.exit(asyncio.run(_reconcile(database_url, args.fix)))
        sys.exit(asyncio.run(_create_operator_key(database_url, args)))
    try:
        config = MeteringConfig.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    configure(SERVICE, config.server.log_level)
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
