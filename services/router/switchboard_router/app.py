"""Wires the router: channels to catalog and metering, Redis, the HTTP session, adapters."""

from __future__ import annotations

import logging

from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.budget import BudgetStore
from switchboard_core.channels import insecure_channel
from switchboard_core.key_changes import KeyChangeListener, channel_name
from switchboard_core.redis_client import create_redis
from switchboard_core.server import GrpcServer, Registration
from switchboard_router.admission import Admission
from switchboard_router.auth import KeyVerifier
from switchboard_router.catalog_cache import CatalogCache
from switchboard_router.config import RouterConfig
from switchboard_router.providers.http import create_session
from switchboard_router.providers.registry import build_adapters
from switchboard_router.relay import Relay
from switchboard_router.service import RouterServicer
from switchboard_router.usage_sink import UsageSink

log = logging.getLogger(__name__)


async def create_app(config: RouterConfig) -> GrpcServer:
    catalog_channel = insecure_channel(config.catalog_addr)
    metering_channel = insecure_channel(config.metering_addr)
    redis = create_redis(config.redis_url)
    session = create_session()
    catalog = CatalogCache(catalog_channel)
    catalog.start()
    admission = Admission(
        BudgetStore(redis, config.budget_prefix),
        config.reservation_ceiling_tokens,
        ttl_seconds=config.max_request_seconds + 60,
    )
    relay = Relay(
        build_adapters(session),
        config.provider_keys,
        UsageSink(redis, config.usage_stream, metering_channel),
        admission,
    )
    verifier = KeyVerifier(metering_channel, config.key_cache_seconds)
    key_changes = KeyChangeListener(redis, channel_name(config.budget_prefix), verifier.invalidate)
    key_changes.start()
    servicer = RouterServicer(
        verifier,
        catalog,
        relay,
        admission,
        config.max_request_seconds,
    )
    if not await catalog.wait_loaded(config.catalog_wait_seconds):
        log.warning("catalog not loaded yet; requests get UNAVAILABLE until it is")

    async def close() -> None:
        await key_changes.stop()
        await relay.drain()
        await catalog.stop()
        await session.close()
        await redis.aclose()
        await catalog_channel.close(None)
        await metering_channel.close(None)

    name = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    return GrpcServer(
        config=config.server,
        registrations=[
            Registration(router_pb2_grpc.add_RouterServiceServicer_to_server, servicer, name)
        ],
        on_stop=[close],
    )
