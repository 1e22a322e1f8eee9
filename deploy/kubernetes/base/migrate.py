"""The migration Job's command: apply every service's pending database migrations, then exit.

Run as ``python /migrate/migrate.py`` in the Switchboard image (kustomization.yaml mounts it
from a ConfigMap), with ``DATABASE_URL``. The services apply the same migrations when they
start, under the same advisory lock (``switchboard_core.db.migrate``); running them once
before a rollout keeps a schema change off the new pods' start path, so a failed migration
stops the rollout here instead of crash-looping every replica. Exit status 0 when the schema
is current, 1 when a migration failed, 2 for bad settings.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from switchboard_catalog.config import SERVICE as CATALOG
from switchboard_core.audit_log import migrate_audit
from switchboard_core.config import ConfigError, EnvReader, read_database_url
from switchboard_core.db import DatabaseTimeouts, create_pool, migrate
from switchboard_core.logs import configure
from switchboard_metering.app import MIGRATIONS as METERING_MIGRATIONS
from switchboard_metering.config import SERVICE as METERING

log = logging.getLogger("switchboard.migrate")

# (owner in schema_migrations, migrations package), in the order the services apply them.
PLAN = (
    (CATALOG, "switchboard_catalog.migrations"),
    (METERING, METERING_MIGRATIONS),
)


async def run(database_url: str, timeouts: DatabaseTimeouts) -> list[str]:
    """Apply the pending migrations; returns the applied names (empty: already current)."""
    pool = await create_pool(database_url, min_size=1, max_size=1, timeouts=timeouts)
    try:
        applied: list[str] = []
        for service, package in PLAN:
            applied += [f"{service}/{name}" for name in await migrate(pool, service, package)]
        applied += [f"audit/{name}" for name in await migrate_audit(pool)]
        return applied
    finally:
        await pool.close()


def main() -> int:
    reader = EnvReader()
    database_url = read_database_url(reader)
    timeouts = DatabaseTimeouts.read(reader)
    try:
        reader.finish()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    configure("migrate", "INFO")
    try:
        applied = asyncio.run(run(database_url, timeouts))
    except (OSError, TimeoutError) as error:
        log.error("database unreachable", extra={"error": type(error).__name__})
        return 1
    except Exception:
        log.exception("migration failed")
        return 1
    log.info("schema current", extra={"applied": len(applied)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
