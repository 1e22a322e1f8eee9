"""``python -m switchboard_metering``: serve the metering service until SIGTERM/SIGINT.

``python -m switchboard_metering reconcile [--fix] [--no-costs]`` recomputes the usage rollups
from the ledger and prints every difference (exit status 1 when there are any and ``--fix`` is
off); then, unless ``--no-costs``, prices every ledger row again with the catalog's price
history (fetched from ``SWITCHBOARD_CATALOG_ADDR`` as the metering service, with the
service's own settings) and prints the rows whose cost differs (exit status 1 when any do;
costs are never changed). Without those settings or a catalog it says so and skips the costs.

``python -m switchboard_metering create-operator-key --name NAME --scope SCOPE ...`` creates an
operator key directly in the database (``DATABASE_URL``), for the first operator: it prints
the secret once. Later keys are made with that key through ``CreateOperatorKey``.

Serving with ``SWITCHBOARD_WORKERS`` above 1 (or ``auto``), this process supervises that many
metering processes sharing the ports (:mod:`switchboard_core.workers`); each is one more
consumer in the usage outbox's consumer group. The service's modules (and gRPC) are imported
only after that choice, so each worker starts in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from switchboard_core.config import ConfigError, EnvReader, read_database_url
from switchboard_core.logs import configure
from switchboard_core.workers import Worker, serve_or_supervise

if TYPE_CHECKING:
    import asyncpg

    from switchboard_metering.config import MeteringConfig

SERVICE = "metering"  # switchboard_metering.config.SERVICE, without importing it (and gRPC)


async def _serve(config: MeteringConfig, worker: Worker | None = None) -> None:
    from switchboard_core.heap import freeze_startup_heap
    from switchboard_metering.app import create_app

    server = await create_app(config)
    await server.start(worker=worker)
    freeze_startup_heap()  # full collections skip what start-up made (switchboard_core.heap)
    await server.run_until_signal()


def _run(worker: Worker) -> int:
    """Serve as ``worker`` until SIGTERM/SIGINT."""
    from switchboard_core import event_loop

    config = _config()
    configure(SERVICE, config.server.log_level)
    event_loop.run(_serve(config, worker), config.server.event_loop)
    return 0


async def _reconcile(database_url: str, fix: bool, costs: MeteringConfig | None) -> int:
    from switchboard_core.db import create_pool
    from switchboard_metering.reconcile import duplicates, reconcile

    pool = await create_pool(database_url)
    try:
        differences = await reconcile(pool, fix=fix)
        twice = await duplicates(pool)
        repriced = await _reprice(pool, costs) if costs is not None else 0
    finally:
        await pool.close()
    for difference in differences:
        print(difference)
    verdict = "fixed" if fix else "found"
    print(f"{len(differences)} differences {verdict} between the ledger and the rollups")
    for duplicate in twice:
        print(duplicate)
    print(f"{len(twice)} generation attempts recorded more than once")
    return 1 if (differences and not fix) or twice or repriced else 0


async def _reprice(pool: asyncpg.Pool, config: MeteringConfig) -> int:
    """Print the rows whose cost is not their price; how many there are."""
    from switchboard_metering.catalog_prices import fetch_book
    from switchboard_metering.repricing import reprice

    book = await fetch_book(config)
    if book is None:
        where = config.catalog_addr or "no SWITCHBOARD_CATALOG_ADDR"
        print(f"costs not recomputed: no price history from the catalog ({where})")
        return 0
    found = await reprice(pool, book)
    for difference in found.differences:
        print(difference)
    listed = (
        "" if found.different == len(found.differences) else f" ({len(found.differences)} listed)"
    )
    print(
        f"{found.different} of {found.checked} ledger costs differ from their price{listed};"
        f" {found.unpriced} rows the catalog's price history cannot price (costs are never"
        " changed)"
    )
    return found.different


async def _create_operator_key(database_url: str, args: argparse.Namespace) -> int:
    from switchboard_core.errors import SwitchboardError
    from switchboard_metering.app import MIGRATIONS
    from switchboard_metering.operators import bootstrap_operator_key

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
    check.add_argument(
        "--no-costs",
        action="store_true",
        help="skip pricing the ledger's rows again with the catalog's price history",
    )
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
            costs = None if args.no_costs else _cost_config()
            sys.exit(asyncio.run(_reconcile(database_url, args.fix, costs)))
        sys.exit(asyncio.run(_create_operator_key(database_url, args)))
    sys.exit(serve_or_supervise(SERVICE, _run))


def _cost_config() -> MeteringConfig | None:
    """The service's settings, to reach the catalog as the service does; None (said) when
    they are incomplete here."""
    from switchboard_metering.config import MeteringConfig

    try:
        return MeteringConfig.from_env()
    except ConfigError as error:
        print(f"costs not recomputed: the metering service's settings are incomplete ({error})")
        return None


def _config() -> MeteringConfig:
    from switchboard_metering.config import MeteringConfig

    try:
        return MeteringConfig.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
