"""Every core used (SWITCHBOARD_WORKERS): the stack with two router processes sharing the
router's ports and two metering processes consuming the usage outbox, split into four streams
(SWITCHBOARD_USAGE_STREAMS, as a deployment past one stream's capacity runs it). Completions
over several connections are served by both routers (as the supervisor's one /metrics,
labelled by worker, tells), each generation lands in the ledger exactly once, each process has
its own identity, each router registered the stream its id picks and metering drained it, and
SIGTERM to the supervisor stops every worker. One test: the stack starts once (most of the
time here) and is not restarted after the SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import grpc
import psutil
import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2_grpc
from switchboard_core.channels import CLIENT_CHANNEL_OPTIONS
from switchboard_core.usage_outbox import registry_key, stream_for, usage_streams
from switchboard_core.workers import METRICS_PORT_STRIDE, Worker
from switchboard_devstack.pki import OPERATOR
from switchboard_devstack.stack import Ports, Stack
from switchboard_devstack.storage import bindable, free_port
from tests.e2e.support import WAITING_FOR_CATALOG, ask, auth

pytestmark = [pytest.mark.e2e]

WORKERS = 2
STREAMS = 4
STACK_SERVICE_ENV = {
    "router": {"SWITCHBOARD_WORKERS": str(WORKERS), "SWITCHBOARD_USAGE_STREAMS": str(STREAMS)},
    "metering": {"SWITCHBOARD_WORKERS": str(WORKERS)},
}
COMPLETIONS = 40
# Separate connections (the kernel spreads connections, not calls, over the workers): with 8,
# all on one of two workers has a chance of 1 in 128; 16 makes it 1 in 32,768.
CONNECTIONS = 16
GRACE_SECONDS = 10.0  # the e2e stacks' SWITCHBOARD_SHUTDOWN_GRACE_SECONDS
# The supervisor's own samples that carry a worker label (from its first scrape on).
SUPERVISORS_OWN = "switchboard_worker_scrape_failures"


def _metrics_base() -> int:
    """A free port (the supervisor's) whose workers' ports are free too."""
    while True:
        port = free_port()
        if port + METRICS_PORT_STRIDE * WORKERS <= 65535 and all(map(bindable, worker_ports(port))):
            return port


@pytest.fixture(scope="module")
def stack_ports() -> Ports:
    free = Ports.free()
    return Ports(
        router=free.router,
        catalog=free.catalog,
        metering=free.metering,
        demo=free.demo,
        router_metrics=_metrics_base(),
        catalog_metrics=free.catalog_metrics,
        metering_metrics=_metrics_base(),
        router_http=free.router_http,
    )


def worker_ports(base: int) -> list[int]:
    return [Worker(i, WORKERS).metrics_port(base) for i in range(WORKERS)]


async def samples(session: aiohttp.ClientSession, port: int) -> list[Sample]:
    """Every sample on the /metrics at ``port``."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


async def by_worker(
    session: aiohttp.ClientSession, port: int, name: str, **labels: str
) -> dict[str, float]:
    """The samples ``name`` matching ``labels`` on a supervisor's /metrics, summed by their
    ``worker`` label."""
    sums: dict[str, float] = {}
    for sample in await samples(session, port):
        if sample.name == name and labels.items() <= sample.labels.items():
            worker = sample.labels["worker"]
            sums[worker] = sums.get(worker, 0.0) + sample.value
    return sums


async def workers_serving(session: aiohttp.ClientSession, stack: Stack) -> None:
    """Until the router's and metering's supervisors serve every worker's metrics (each
    worker's after its gRPC ports are bound), 30 s at most."""
    deadline = time.monotonic() + 30
    everyone = {str(index) for index in range(WORKERS)}
    for port in (stack.ports.router_metrics, stack.ports.metering_metrics):
        while True:
            try:
                served = await samples(session, port)
            except aiohttp.ClientError:
                served = []
            merged = [s for s in served if not s.name.startswith(SUPERVISORS_OWN)]
            if {s.labels.get("worker") for s in merged} >= everyone:
                break
            assert time.monotonic() < deadline, f"not every worker's metrics on {port}"
            await asyncio.sleep(0.1)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def own_connection(stack: Stack) -> grpc.aio.Channel:
    """A channel to the router on a connection of its own (no subchannel shared with other
    channels of this process)."""
    ca = stack.pki.read(OPERATOR)[2]
    return grpc.aio.secure_channel(
        stack.address("router"),
        grpc.ssl_channel_credentials(root_certificates=ca),
        options=[*CLIENT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)],
    )


async def complete(
    stub: router_pb2_grpc.RouterServiceAsyncStub, key: metering_pb2.CreateApiKeyResponse, i: int
) -> str:
    """One streamed completion; its generation id (retried while a fresh worker still waits
    for its first catalog snapshot)."""
    for _ in range(50):
        try:
            messages = [m async for m in stub.StreamCompletion(ask(i), metadata=auth(key))]
        except grpc.aio.AioRpcError as error:
            assert error.code() in WAITING_FOR_CATALOG
            await asyncio.sleep(0.1)
            continue
        assert messages[-1].HasField("end")
        return messages[0].start.generation_id
    raise AssertionError("the router never served")


def logged(stack: Stack, service: str, message: str, field: str) -> set[str]:
    """The values of ``field`` in ``service``'s log lines saying ``message`` (every worker
    writes to the service's one log)."""
    assert stack.log_dir is not None
    values = set()
    for line in (stack.log_dir / f"{service}.log").read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("msg") == message:
                values.add(str(record[field]))
    return values


async def ledger_counts(database_url: str, key_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT generation_id, count(*) AS n FROM generations WHERE key_id = $1"
            " GROUP BY generation_id",
            key_id,
        )
    finally:
        await conn.close()
    return {row["generation_id"]: row["n"] for row in rows}


async def test_both_routers_serve_the_ledger_holds_each_generation_once_and_sigterm_stops_all(
    stack: Stack,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    session: aiohttp.ClientSession,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    await workers_serving(session, stack)
    # One port per service for Prometheus (the supervisor's), and each worker's own still
    # reachable for debugging, unlabelled.
    supervisor_port = stack.ports.router_metrics
    own = {
        s.name: s.value for s in await samples(session, supervisor_port) if "worker" not in s.labels
    }
    assert (own["switchboard_workers"], own["switchboard_workers_alive"]) == (WORKERS, WORKERS)
    for port in worker_ports(supervisor_port):
        assert not any("worker" in s.labels for s in await samples(session, port))
    key = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="workers"))
    handled = {
        "name": "switchboard_grpc_server_handled_total",
        "grpc_method": "StreamCompletion",
        "grpc_code": "OK",
    }
    before = await by_worker(session, supervisor_port, **handled)
    channels = [own_connection(stack) for _ in range(CONNECTIONS)]
    try:
        stubs = [router_pb2_grpc.RouterServiceStub(channel) for channel in channels]
        generations = await asyncio.gather(
            *(complete(stubs[i % CONNECTIONS], key, i) for i in range(COMPLETIONS))
        )
    finally:
        for channel in channels:
            await channel.close(None)
    after = await by_worker(session, supervisor_port, **handled)
    served = {worker: n - before.get(worker, 0.0) for worker, n in after.items()}
    print(f"\nStreamCompletion calls per router worker (one scrape of the supervisor): {served}")
    assert served.keys() == {str(index) for index in range(WORKERS)}
    assert all(n > 0 for n in served.values()), served
    assert sum(served.values()) == COMPLETIONS  # answered OK: retried ones failed before

    deadline = time.monotonic() + 20
    while (counts := await ledger_counts(database_url, key.api_key.id)).keys() < set(generations):
        assert time.monotonic() < deadline, f"{len(counts)} of {COMPLETIONS} in the ledger"
        await asyncio.sleep(0.2)
    assert len(set(generations)) == COMPLETIONS
    assert counts == dict.fromkeys(generations, 1)

    # Each process its own identity: the router ids its liveness records and reservations
    # carry, and the consumer names in the outbox's group (registered there by reading).
    router_ids = logged(stack, "router", "router liveness", "router_id")
    assert len(router_ids) == WORKERS, router_ids
    consumers = logged(stack, "metering", "usage outbox consumer started", "consumer")
    assert len(consumers) == WORKERS, consumers
    client = redis.from_url(redis_url)
    base = f"{redis_prefix}usage"
    written = {stream_for(router_id, usage_streams(base, STREAMS)) for router_id in router_ids}
    try:
        grouped = await client.xinfo_consumers(base, "metering")
        members: Any = await client.smembers(registry_key(base))
        listed = {m.decode() for m in members}
        deadline = time.monotonic() + 5  # acknowledged and deleted just after the commit
        while True:
            left = {
                stream: (await client.xpending(stream, "metering"))["pending"]
                + await client.xlen(stream)
                for stream in written
            }
            if not any(left.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    assert consumers <= {c["name"].decode() for c in grouped}
    assert written <= listed  # registered by the routers that write them (earlier tests' too)
    assert left == dict.fromkeys(written, 0)  # drained: written, acknowledged and deleted
    # Counted just after the ledger's commit: a short, bounded wait for the last batch's.
    deadline = time.monotonic() + 5
    while True:
        ingested = await by_worker(
            session, stack.ports.metering_metrics, "switchboard_usage_events_ingested_total"
        )
        if sum(ingested.values()) >= COMPLETIONS or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    print(f"usage events ingested per metering worker: {ingested}")
    assert sum(ingested.values()) == COMPLETIONS  # written once each, whichever worker wrote

    # SIGTERM to the supervisor stops every worker within the grace period (last: the stack
    # is not restarted, so the module's stack ends here).
    supervisor = stack.processes["router"]
    workers = psutil.Process(supervisor.pid).children()
    assert len(workers) == WORKERS
    began = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(supervisor.wait, GRACE_SECONDS + 10)
    took = time.monotonic() - began
    print(f"router supervisor and its {WORKERS} workers stopped in {took:.2f} s")
    assert status == 0
    assert took < GRACE_SECONDS
    assert not [w.pid for w in workers if w.is_running() and w.status() != "zombie"]
