"""Assembles the catalog server: pool, migrations, seed, broadcaster, price scheduler,
servicer."""

from __future__ import annotations

import logging

from switchboard_catalog.config import SERVICE, CatalogConfig
from switchboard_catalog.importer import CatalogImporter
from switchboard_catalog.scheduler import PriceScheduler
from switchboard_catalog.seed import apply_seed, load_seed
from switchboard_catalog.service import SERVICE_NAME, CatalogService, add_to_server
from switchboard_catalog.store import CatalogStore
from switchboard_catalog.watch import CatalogBroadcaster
from switchboard_core import tracing
from switchboard_core.audit_log import AuditLog, audit_registration, migrate_audit
from switchboard_core.auth import Authenticator, CredentialVerifier
from switchboard_core.channels import service_channel
from switchboard_core.db import create_pool, migrate
from switchboard_core.health import database_probe
from switchboard_core.remote_credentials import MeteringCredentials
from switchboard_core.server import GrpcServer, Registration

log = logging.getLogger(__name__)


async def create_app(
    config: CatalogConfig, credentials: CredentialVerifier | None = None
) -> GrpcServer:
    """The catalog server, migrated and seeded, not yet started. Operator keys are checked by
    metering unless ``credentials`` says otherwise."""
    tracing.setup(config.tracing, "catalog")
    seed = None
    if config.seed_path is not None:
        # Read and validated before touching the database: a bad seed fails fast.
        seed = load_seed(
            config.seed_path, policy=config.upstream_policy, demo_base_url=config.demo_base_url
        )
    pool = await create_pool(config.database_url, timeouts=config.database_timeouts)
    store = CatalogStore(pool, price_history_days=config.price_history_days)
    broadcaster = CatalogBroadcaster(
        store, config.database_url, poll_seconds=config.version_poll_seconds
    )
    scheduler = PriceScheduler(store, max_wait_seconds=config.schedule_max_wait_seconds)
    try:
        await migrate(pool, SERVICE, "switchboard_catalog.migrations")
        await migrate_audit(pool)
        if seed is not None:
            await apply_seed(store, seed)
        if config.import_source:
            result = await CatalogImporter(store, pool).run(dry_run=False)
            log.info(
                "catalog imported at start",
                extra={"source": result.source_version, "changes": len(result.changes)},
            )
        # Before the first snapshot: prices due while no catalog ran are applied first.
        await scheduler.start()
        await broadcaster.start()
    except BaseException:
        await scheduler.close()
        await broadcaster.close()
        await pool.close()
        raise
    servicer = CatalogService(
        store, broadcaster, config.upstream_policy, importer=CatalogImporter(store, pool)
    )
    audit_log = AuditLog(pool, SERVICE)  # catalog writes, and ListAuditEvents
    # Operator keys (admin calls) are checked by metering, which owns them.
    metering = service_channel(config.metering_addr, config.server.tls)

    async def close_metering() -> None:
        await metering.close(None)

    return GrpcServer(
        config=config.server,
        registrations=[
            Registration(add=add_to_server, servicer=servicer, full_name=SERVICE_NAME),
            audit_registration(audit_log),
        ],
        audit=audit_log,
        authenticator=Authenticator(
            config.server.tls, credentials or MeteringCredentials(metering)
        ),
        # Watch streams never end on their own: close them first so routers move at once.
        before_stop=[broadcaster.close],
        probes=[database_probe(pool)],  # NOT_SERVING while Postgres does not answer
        on_stop=[scheduler.close, broadcaster.close, pool.close, close_metering, tracing.shutdown],
    )
