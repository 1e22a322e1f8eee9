"""Assembles the catalog server: pool, migrations, seed, broadcaster, servicer."""

from __future__ import annotations

import logging

from switchboard_catalog.config import SERVICE, CatalogConfig
from switchboard_catalog.seed import apply_seed, load_seed
from switchboard_catalog.service import SERVICE_NAME, CatalogService, add_to_server
from switchboard_catalog.store import CatalogStore
from switchboard_catalog.watch import CatalogBroadcaster
from switchboard_core.db import create_pool, migrate
from switchboard_core.server import GrpcServer, Registration

log = logging.getLogger(__name__)


async def create_app(config: CatalogConfig) -> GrpcServer:
    """The catalog server, migrated and seeded, not yet started."""
    seed = None
    if config.seed_path is not None:
        # Read and validated before touching the database: a bad seed fails fast.
        seed = load_seed(config.seed_path, demo_base_url=config.demo_base_url)
    pool = await create_pool(config.database_url)
    store = CatalogStore(pool)
    broadcaster = CatalogBroadcaster(
        store, config.database_url, poll_seconds=config.version_poll_seconds
    )
    try:
        await migrate(pool, SERVICE, "switchboard_catalog.migrations")
        if seed is not None:
            await apply_seed(store, seed)
        await broadcaster.start()
    except BaseException:
        await broadcaster.close()
        await pool.close()
        raise
    servicer = CatalogService(store, broadcaster)
    return GrpcServer(
        config=config.server,
        registrations=[Registration(add=add_to_server, servicer=servicer, full_name=SERVICE_NAME)],
        # Watch streams never end on their own: close them first so routers move at once.
        before_stop=[broadcaster.close],
        on_stop=[broadcaster.close, pool.close],
    )
