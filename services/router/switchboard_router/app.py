"""Wires the router: channels to catalog and metering, Redis, the HTTP session, adapters."""

from __future__ import annotations

import logging

from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core import tracing
from switchboard_core.auth import Authenticator
from switchboard_core.budget import BudgetStore
from switchboard_core.channels import service_channel
from switchboard_core.key_changes import KeyChangeListener, channel_name
from switchboard_core.liveness import Liveness, new_router_id
from switchboard_core.rate_limits import RateLimiter
from switchboard_core.redis_client import RedisDeadline, create_redis
from switchboard_core.remote_credentials import MeteringCredentials
from switchboard_core.server import GrpcServer, Registration
from switchboard_core.usage_outbox import registry_key, stream_for, usage_streams
from switchboard_router import metrics, token_count
from switchboard_router.account import AccountReads
from switchboard_router.admission import SPOOL_KIND as SETTLE_KIND
from switchboard_router.admission import Admission
from switchboard_router.auth import KeyVerifier, RouterCredentials
from switchboard_router.capacity import RedisEndpointGate
from switchboard_router.catalog_cache import CatalogCache
from switchboard_router.completions import Completions
from switchboard_router.config import RouterConfig
from switchboard_router.edge.door import Door
from switchboard_router.edge.server import HttpEdge
from switchboard_router.endpoint_stats import LiveSettings, LiveStats
from switchboard_router.hedging import HedgeDefaults
from switchboard_router.inflight import InFlight
from switchboard_router.leases import LeaseKeeper
from switchboard_router.providers.base import StallLimits
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.providers.http import create_session
from switchboard_router.providers.registry import build_adapters
from switchboard_router.relay import Relay
from switchboard_router.retry_budget import RetryBudget
from switchboard_router.service import RouterServicer
from switchboard_router.spool import Replayer, Spool, spool_dir
from switchboard_router.traffic import TrafficControl
from switchboard_router.usage_sink import SPOOL_KIND as USAGE_KIND
from switchboard_router.usage_sink import UsageSink

log = logging.getLogger(__name__)


async def create_app(config: RouterConfig) -> GrpcServer:
    tracing.setup(config.tracing, "router")  # first: the channels carry the trace context
    catalog_channel = service_channel(config.catalog_addr, config.internal_tls)
    metering_channel = service_channel(config.metering_addr, config.internal_tls)
    redis = create_redis(
        config.redis_url, timeout=config.redis_timeout_seconds, cluster=config.redis_cluster
    )
    session = create_session(config.upstream_policy)
    catalog = CatalogCache(
        catalog_channel,
        StallLimits(config.upstream_first_byte_seconds, config.upstream_idle_seconds),
        StallLimits(
            config.upstream_thinking_first_byte_seconds, config.upstream_thinking_idle_seconds
        ),
    )
    catalog.start()
    # The usage outbox's stream this router writes (one of several when it is split) and, in
    # its hash slot, this router's heartbeat and generations for metering's sweep.
    router_id = new_router_id()
    streams = usage_streams(config.usage_stream, config.usage_streams)
    stream = stream_for(router_id, streams)
    inflight = InFlight(
        Liveness(
            redis,
            config.budget_prefix,
            stream,
            streams=streams,
            registry=registry_key(config.usage_stream) if len(streams) > 1 else None,
        ),
        router_id,
        config.heartbeat_seconds,
        config.heartbeat_ttl_seconds,
    )
    # Request-path Redis calls: bounded, and failing at once while Redis is known down.
    redis_deadline = RedisDeadline(
        config.redis_timeout_seconds,
        on_failure=lambda operation, cause: metrics.REDIS_FAILURES.labels(operation, cause).inc(),
    )
    spool = await Spool.open(  # usage events and settles that could not be delivered
        spool_dir(config.spool_dir, redis, config.usage_stream, config.budget_prefix)
    )
    admission = Admission(
        BudgetStore(redis, config.budget_prefix),
        config.reservation_ceiling_tokens,
        ttl_seconds=config.max_request_seconds + 60,  # the fallback when nothing sweeps
        holder=inflight.router_id,
        deadline=redis_deadline,
        spool=spool,
    )
    sink = UsageSink(
        redis,
        stream,
        metering_channel,
        inflight,
        deadline=redis_deadline,
        fallback_seconds=config.usage_fallback_seconds,
        spool=spool,
    )
    replayer = Replayer(
        spool,
        {USAGE_KIND: sink.deliver_spooled, SETTLE_KIND: admission.deliver_spooled},
    )
    replayer.start()  # at once: what a previous process left first
    # Rate limits (keys, accounts) and endpoint caps, shared by every router in Redis; their
    # concurrency leases renewed by one task (docs/LIMITS.md).
    rate_limiter = RateLimiter(redis, config.budget_prefix)
    leases = LeaseKeeper(rate_limiter, redis_deadline, config.concurrency_lease_seconds)
    traffic = TrafficControl(rate_limiter, leases, redis_deadline)
    endpoint_gate = RedisEndpointGate(rate_limiter, leases, redis_deadline)  # for the Relay
    leases.start()
    # Live endpoint statistics and circuit breakers, shared by every router through Redis
    # (endpoint_stats.py): the relay reports each attempt to ``live``; routing, hedging and
    # the model list read it (local, no I/O).
    live = LiveStats(redis, LiveSettings.from_config(config))
    live.start()
    relay = Relay(
        build_adapters(session),
        ProviderCredentials(config.provider_keys, config.provider_hosts),
        sink,
        admission,
        inflight,
        observer=live,
        gate=endpoint_gate,
        live=live,
        retry_budget=RetryBudget(config.retry_budget_ratio, config.retry_budget_min_per_second),
        queue_seconds=config.endpoint_queue_seconds,
        circuit_retry_seconds=config.breaker_open_seconds,
    )
    credentials = RouterCredentials(
        KeyVerifier(
            metering_channel,
            config.key_cache_seconds,
            stale_seconds=config.key_stale_seconds,
            timeout_seconds=config.key_verify_timeout_seconds,
        ),
        MeteringCredentials(
            metering_channel,
            ttl_seconds=config.key_cache_seconds,
            stale_seconds=config.key_stale_seconds,
            timeout_seconds=config.key_verify_timeout_seconds,
        ),
    )
    key_changes = KeyChangeListener(
        redis,
        channel_name(config.budget_prefix),
        credentials.key_changed,
        credentials.resubscribed,
    )
    key_changes.start()
    inflight.start()
    completions = Completions(
        catalog,
        relay,
        admission,
        config.max_request_seconds,
        traffic=traffic,
        live=live,
        hedging=HedgeDefaults.of(config),
    )
    account = AccountReads(metering_channel, catalog, live=live)
    servicer = RouterServicer(completions, account)
    if not await catalog.wait_loaded(config.catalog_wait_seconds):
        log.warning("catalog not loaded yet; requests get UNAVAILABLE until it is")

    async def close() -> None:
        await key_changes.stop()
        await relay.drain()
        await traffic.drain()  # the requests' releases, then the attempts'
        await endpoint_gate.drain()
        await leases.stop()
        await replayer.finish()  # delivers what it can, so leaving leaves fewer records
        token_count.shutdown()  # the tokenizer worker, once no cut stream is left to count
        await inflight.stop()  # only once drained: what is left gets swept
        await live.stop()  # its last counts written, bounded
        await catalog.stop()
        await session.close()
        spool.close()
        await redis.aclose()
        await catalog_channel.close(None)
        await metering_channel.close(None)

    authenticator = Authenticator(config.server.tls, credentials, direct_tenants=True)
    companions = []
    if config.http_port is not None:  # the OpenAI- and Anthropic-compatible HTTP edge
        door = Door(completions, account, authenticator, config.http_keepalive_seconds)
        companions.append(
            HttpEdge(
                door,
                config.server.host,
                config.http_port,
                config.server.tls,
                config.server.shutdown_grace_seconds,
            )
        )
    name = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    return GrpcServer(
        config=config.server,
        authenticator=authenticator,
        companions=companions,
        registrations=[
            Registration(router_pb2_grpc.add_RouterServiceServicer_to_server, servicer, name)
        ],
        on_stop=[close, tracing.shutdown],  # the last spans exported once all else stopped
    )
