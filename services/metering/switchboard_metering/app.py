"""Builds the metering server: pool, migrations, Redis, servicer and the outbox consumer."""

from __future__ import annotations

import logging

import asyncpg
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core import tracing
from switchboard_core.audit_log import AuditLog, audit_registration, migrate_audit
from switchboard_core.auth import Authenticator
from switchboard_core.budget import BudgetStore
from switchboard_core.db import create_pool, migrate
from switchboard_core.health import database_probe
from switchboard_core.key_changes import channel_name, publish_key_change
from switchboard_core.redis_client import create_redis
from switchboard_core.server import GrpcServer, Registration
from switchboard_metering.budgets import Budgets
from switchboard_metering.catalog_prices import CatalogPrices
from switchboard_metering.config import MeteringConfig
from switchboard_metering.credentials import LocalCredentials
from switchboard_metering.keys import KeyStore
from switchboard_metering.ledger import Ledger
from switchboard_metering.operators import OperatorKeyStore
from switchboard_metering.outbox_streams import UsageStreams
from switchboard_metering.partitions import Partitions
from switchboard_metering.service import MeteringServicer

log = logging.getLogger(__name__)

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
MIGRATIONS = "switchboard_metering.migrations"


async def _open_database(config: MeteringConfig) -> asyncpg.Pool:
    pool = await create_pool(config.database_url, timeouts=config.database_timeouts)
    try:
        await migrate(pool, "metering", MIGRATIONS)
        await migrate_audit(pool)
    except BaseException:
        await pool.close()
        raise
    return pool


async def create_app(config: MeteringConfig) -> GrpcServer:
    """The metering server, not yet serving; its outbox consumer is already running."""
    tracing.setup(config.tracing, "metering")
    pool = await _open_database(config)
    partitions = Partitions(pool, config.retention, config.event_window)
    try:
        await partitions.maintain()
    except BaseException:
        await pool.close()
        raise
    partitions.start()
    # Reads wait longer than the outbox consumer's blocking XREADGROUP; connects 2 s at most.
    client: redis.Redis = create_redis(
        config.redis_url,
        timeout=config.outbox.block_ms / 1000 + 2.0,
        connect_timeout=2.0,
        cluster=config.redis_cluster,
    )
    prices = CatalogPrices.open(config)  # usage costs are checked against the catalog's
    ledger = Ledger(pool, partitions, cost_check=prices.check if prices else None)
    # Each outbox stream's consumer, and its sweeper of routers that died (their generations
    # recorded, their reservations released): the base stream and the shards routers register.
    streams = UsageStreams(
        client,
        ledger,
        config.outbox,
        prefix=config.budget_prefix,
        sweep_seconds=config.sweep_seconds,
        heartbeat_ttl_seconds=config.heartbeat_ttl_seconds,
        ready=prices.ready if prices else None,
    )
    await streams.start()

    keys = KeyStore(pool, verify_timeout_seconds=config.key_verify_db_seconds)
    budgets = Budgets(pool, keys, BudgetStore(client, config.budget_prefix))
    budgets.start()

    async def close() -> None:
        await streams.stop()
        if prices is not None:
            await prices.stop()
        await budgets.stop()
        await partitions.stop()
        await client.aclose()
        await pool.close()

    try:
        await budgets.load_if_missing()  # Redis lost its budget counters: rebuild them
    except (redis.RedisError, OSError):
        log.warning("budgets not loaded into redis; they load on the next start")
    except BaseException:
        await close()
        raise
    channel = channel_name(config.budget_prefix)

    async def announce(subject: str) -> None:
        await publish_key_change(client, channel, subject)

    operators = OperatorKeyStore(pool, verify_timeout_seconds=config.key_verify_db_seconds)
    audit_log = AuditLog(pool, "metering")  # admin changes, and ListAuditEvents
    servicer = MeteringServicer(keys, ledger, budgets, operators, announce)
    authenticator = Authenticator(
        config.server.tls,
        LocalCredentials(keys, operators),
        # End users' keys arrive only forwarded by the router, for their own data.
        tenant_forwarders=frozenset({"router"}),
    )
    return GrpcServer(
        config=config.server,
        authenticator=authenticator,
        registrations=[
            Registration(
                add=metering_pb2_grpc.add_MeteringServiceServicer_to_server,
                servicer=servicer,
                full_name=SERVICE_NAME,
            ),
            audit_registration(audit_log),
        ],
        audit=audit_log,
        on_stop=[close, tracing.shutdown],  # the last spans exported once all else stopped
        probes=[database_probe(pool)],  # NOT_SERVING while Postgres does not answer
    )
