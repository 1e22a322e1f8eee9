"""Builds the metering server: pool, migrations, Redis, servicer and the outbox consumer."""

from __future__ import annotations

import logging

import asyncpg
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.budget import BudgetStore
from switchboard_core.db import create_pool, migrate
from switchboard_core.key_changes import channel_name, publish_key_change
from switchboard_core.redis_client import create_redis
from switchboard_core.server import GrpcServer, Registration
from switchboard_metering.budgets import Budgets
from switchboard_metering.config import MeteringConfig
from switchboard_metering.keys import KeyStore
from switchboard_metering.ledger import Ledger
from switchboard_metering.outbox import OutboxConsumer
from switchboard_metering.partitions import Partitions
from switchboard_metering.service import MeteringServicer

log = logging.getLogger(__name__)

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
MIGRATIONS = "switchboard_metering.migrations"


async def _open_database(url: str) -> asyncpg.Pool:
    pool = await create_pool(url)
    try:
        await migrate(pool, "metering", MIGRATIONS)
    except BaseException:
        await pool.close()
        raise
    return pool


async def create_app(config: MeteringConfig) -> GrpcServer:
    """The metering server, not yet serving; its outbox consumer is already running."""
    pool = await _open_database(config.database_url)
    partitions = Partitions(pool, config.retention)
    try:
        await partitions.maintain()
    except BaseException:
        await pool.close()
        raise
    partitions.start()
    client: redis.Redis = create_redis(config.redis_url)
    ledger = Ledger(pool, partitions)
    consumer = OutboxConsumer(client, ledger, config.outbox)
    consumer.start()

    keys = KeyStore(pool)
    budgets = Budgets(pool, keys, BudgetStore(client, config.budget_prefix))
    budgets.start()

    async def close() -> None:
        await consumer.stop()
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

    servicer = MeteringServicer(keys, ledger, budgets, announce)
    return GrpcServer(
        config=config.server,
        registrations=[
            Registration(
                add=metering_pb2_grpc.add_MeteringServiceServicer_to_server,
                servicer=servicer,
                full_name=SERVICE_NAME,
            )
        ],
        on_stop=[close],
    )
