"""WatchCatalog: snapshots on change, shared between watchers, LISTEN/poll, shutdown."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog.testing import RunningCatalog
from switchboard_catalog.watch import LISTEN_APPLICATION_NAME
from tests.secure import secure_catalog

TIMEOUT = 5.0
Stream = grpc.aio.UnaryStreamCall[catalog_pb2.WatchCatalogRequest, catalog_pb2.WatchCatalogResponse]


@pytest.fixture(scope="module")
async def catalog(database_url: str) -> AsyncIterator[RunningCatalog]:
    # A long poll: changes seen within the test timeouts came through LISTEN/NOTIFY.
    async with secure_catalog(
        database_url, as_service="router", version_poll_seconds=60
    ) as running:
        yield running


def _model(name: str = "w") -> catalog_pb2.Model:
    return catalog_pb2.Model(
        id=f"sbtest/{name}-{uuid.uuid4().hex[:10]}",
        display_name="Watch test model",
        context_length=1024,
        input_modalities=["text"],
        output_modalities=["text"],
    )


async def _upsert(catalog: RunningCatalog, model: catalog_pb2.Model) -> None:
    await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))


async def _next(stream: Stream) -> catalog_pb2.WatchCatalogResponse:
    async with asyncio.timeout(TIMEOUT):
        message = await stream.read()
    assert isinstance(message, catalog_pb2.WatchCatalogResponse)
    return message


async def _until(condition: Callable[[], bool]) -> None:
    """Waits (bounded) for server-side state that has no event of its own."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110  # server-side counters have no event
            await asyncio.sleep(0.01)


async def _close(catalog: RunningCatalog, *streams: Stream) -> None:
    """Cancels the streams and waits until the server has cleaned up every watcher."""
    for stream in streams:
        stream.cancel()
    await _until(lambda: catalog.broadcaster.watchers == 0)


def _watch(catalog: RunningCatalog, known_version: int = 0) -> Stream:
    request = catalog_pb2.WatchCatalogRequest(known_version=known_version)
    return catalog.stub.WatchCatalog(request)


async def test_snapshot_now_then_after_each_change(catalog: RunningCatalog) -> None:
    stream = _watch(catalog)
    first = await _next(stream)
    assert first.version >= 1
    assert "openai" in {provider.id for provider in first.providers}
    demo = next(model for model in first.models if model.id == "switchboard/demo")
    assert demo.endpoints[0].upstream_model == "demo"

    model = _model()
    await _upsert(catalog, model)
    second = await _next(stream)
    assert second.version > first.version
    assert model.id in {m.id for m in second.models}

    await _close(catalog, stream)


async def test_two_watchers_share_one_snapshot(catalog: RunningCatalog) -> None:
    streams = [_watch(catalog), _watch(catalog)]
    firsts = [await _next(stream) for stream in streams]
    assert firsts[0] == firsts[1]
    built = catalog.broadcaster.snapshots_built

    model = _model()
    await _upsert(catalog, model)
    seconds = [await _next(stream) for stream in streams]
    assert seconds[0].SerializeToString() == seconds[1].SerializeToString()
    assert seconds[0].version > firsts[0].version
    assert model.id in {m.id for m in seconds[0].models}
    assert catalog.broadcaster.snapshots_built == built + 1
    await _close(catalog, *streams)


async def test_current_version_waits_for_a_change(catalog: RunningCatalog) -> None:
    current = catalog.broadcaster.current
    assert current is not None
    stream = _watch(catalog, known_version=current.version)
    reading = asyncio.create_task(_next(stream))
    await _until(lambda: catalog.broadcaster.watchers == 1)
    assert not reading.done()

    model = _model()
    await _upsert(catalog, model)
    update = await reading
    assert update.version > current.version
    assert model.id in {m.id for m in update.models}
    await _close(catalog, stream)


async def test_negative_known_version_is_invalid(catalog: RunningCatalog) -> None:
    stream = _watch(catalog, known_version=-1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _next(stream)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_listen_connection_is_reestablished(
    catalog: RunningCatalog, database_url: str
) -> None:
    stream = _watch(catalog)
    await _next(stream)
    connects = catalog.broadcaster.listen_connects
    conn = await asyncpg.connect(database_url)
    try:
        killed = await conn.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = $1 AND datname = current_database()""",
            LISTEN_APPLICATION_NAME,
        )
    finally:
        await conn.close()
    assert killed >= 1
    await _until(lambda: catalog.broadcaster.listen_connects > connects)

    model = _model()
    await _upsert(catalog, model)
    update = await _next(stream)
    while model.id not in {m.id for m in update.models}:
        update = await _next(stream)  # a catch-up snapshot after reconnecting may come first
    assert update.version == await _current_version(database_url)
    await _close(catalog, stream)


async def _current_version(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT version FROM catalog_version"))
    finally:
        await conn.close()


async def test_version_poll_catches_changes_without_notify(database_url: str) -> None:
    async with secure_catalog(
        database_url, as_service="router", seed=False, version_poll_seconds=0.2
    ) as catalog:
        stream = _watch(catalog)
        first = await _next(stream)
        model_id = f"sbtest/silent-{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():  # a write that forgets pg_notify
                await conn.execute(
                    "INSERT INTO models (id, display_name, context_length) VALUES ($1, 'x', 1)",
                    model_id,
                )
                await conn.execute("UPDATE catalog_version SET version = version + 1")
        finally:
            await conn.close()
        update = await _next(stream)
        assert update.version > first.version
        assert model_id in {m.id for m in update.models}
        await _close(catalog, stream)


async def test_stop_ends_open_watch_streams_at_once(database_url: str) -> None:
    async with secure_catalog(
        database_url, as_service="router", seed=False, grace_seconds=30
    ) as catalog:
        stream = _watch(catalog)
        await _next(stream)
        started = time.monotonic()
        async with asyncio.timeout(TIMEOUT):
            await catalog.server.stop()
        assert time.monotonic() - started < 2.0, "stop waited for the watch stream"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _next(stream)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
