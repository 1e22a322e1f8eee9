"""Lifecycle over the router's real gRPC surface (its servicer behind the shared interceptor):
a retired model is refused FAILED_PRECONDITION with one ErrorInfo naming the date and the
successor; a deprecated one answers, both RPCs carrying the ``switchboard-deprecated`` trailing
entry, and the metric counts it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.auth import Authenticator, TenantPrincipal
from switchboard_core.interceptors import ServerInterceptor
from switchboard_router import metrics
from switchboard_router.account import AccountReads
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    Finish,
    FinishEvent,
    TextDelta,
    UsageReport,
)
from switchboard_router.catalog_cache import CatalogCache, Route, Snapshot
from switchboard_router.completions import Completions
from switchboard_router.relay import Completed, Relay, RelayEvent, Started
from switchboard_router.service import RouterServicer
from tests.unit.test_router_lifecycle import HAIKU_NEW, HAIKU_OLD, catalog, endpoint, stamp

NOW = datetime.now(UTC)
OLD_MODEL = catalog_pb2.Model(
    id=HAIKU_OLD,
    endpoints=[endpoint(HAIKU_OLD, "anthropic")],
    deprecation_time=stamp(NOW - timedelta(days=60)),
    retirement_time=stamp(NOW - timedelta(days=1)),
    successor_model_id=HAIKU_NEW,
)
RETIRES = NOW + timedelta(days=20)
NEW_MODEL = catalog_pb2.Model(
    id=HAIKU_NEW,
    endpoints=[endpoint(HAIKU_NEW, "anthropic")],
    deprecation_time=stamp(NOW - timedelta(days=1)),
    retirement_time=stamp(RETIRES),
    successor_model_id="anthropic/claude-haiku-5",
)
LIVE = catalog_pb2.Model(id="anthropic/claude-sonnet-4.5", endpoints=[endpoint("s", "anthropic")])
LIVE.endpoints[0].model_id = LIVE.id


@dataclass
class FakeCatalog:
    snapshot: Snapshot
    loaded: bool = True


class FakeRelay:
    """Answers every request from its first route at once."""

    async def run(
        self, request: Any, routes: list[Route], caller: Caller, **_: Any
    ) -> AsyncIterator[RelayEvent]:
        yield Started("gen-1", routes[0], 0.0)
        yield TextDelta("hello")
        yield Completed(FinishEvent(Finish.STOP), UsageReport(3, 1), Decimal(0))


class FakeAdmission:
    async def admit(self, *_: Any, **__: Any) -> None:
        return None


class LetEveryoneIn:
    async def authorize(self, *_: Any) -> TenantPrincipal:
        return TenantPrincipal("key_1", "acct_1", Caller("key_1", "acct_1"))


@pytest.fixture
async def router() -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    snapshot = Snapshot.from_proto(catalog(OLD_MODEL, NEW_MODEL, LIVE))
    completions = Completions(
        cast(CatalogCache, FakeCatalog(snapshot)),
        cast(Relay, FakeRelay()),
        cast(Admission, FakeAdmission()),
        60.0,
    )
    servicer = RouterServicer(completions, cast(AccountReads, None))
    server = grpc.aio.server(interceptors=[ServerInterceptor(cast(Authenticator, LetEveryoneIn()))])
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)
    await server.stop(None)


def hello() -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]


def trailing(pairs: Any) -> dict[str, Any]:
    return {key: value for key, value in pairs or ()}


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    (info,) = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    out = error_details_pb2.ErrorInfo()
    info.Unpack(out)
    return out


async def test_a_retired_model_is_refused_naming_its_date_and_successor(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    request = router_pb2.CreateCompletionRequest(model=HAIKU_OLD, messages=hello())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.CreateCompletion(request)
    error = refused.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    day = (NOW - timedelta(days=1)).date().isoformat()
    assert error.details() == f"{HAIKU_OLD} was retired on {day}; use {HAIKU_NEW}"
    info = error_info(error)
    assert info.reason == "MODEL_RETIRED"
    assert info.metadata["successor_model_id"] == HAIKU_NEW
    assert info.metadata["retirement_date"] == day
    assert info.metadata["model"] == HAIKU_OLD


async def test_a_retired_model_with_a_live_fallback_is_served_by_it(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    request = router_pb2.CreateCompletionRequest(
        model=HAIKU_OLD, messages=hello(), fallback_models=[LIVE.id]
    )
    call = router.CreateCompletion(request)
    reply = await call
    assert reply.model == LIVE.id
    assert "switchboard-deprecated" not in trailing(await call.trailing_metadata())


async def test_a_deprecated_model_answers_with_the_trailing_entry_and_the_metric(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    counter = metrics.DEPRECATED_REQUESTS.labels(HAIKU_NEW)
    before = counter._value.get()
    expected = (
        f"{HAIKU_NEW}; retires={RETIRES.date().isoformat()}; successor=anthropic/claude-haiku-5"
    )

    whole = router.CreateCompletion(
        router_pb2.CreateCompletionRequest(model=HAIKU_NEW, messages=hello())
    )
    assert (await whole).text == "hello"
    assert trailing(await whole.trailing_metadata())["switchboard-deprecated"] == expected

    stream = router.StreamCompletion(
        router_pb2.StreamCompletionRequest(model=HAIKU_NEW, messages=hello())
    )
    messages = [message async for message in stream]
    assert messages[-1].HasField("end")
    assert trailing(await stream.trailing_metadata())["switchboard-deprecated"] == expected
    assert counter._value.get() == before + 2


async def test_a_live_model_carries_no_deprecation_entry(
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> None:
    call = router.CreateCompletion(
        router_pb2.CreateCompletionRequest(model=LIVE.id, messages=hello())
    )
    await call
    assert "switchboard-deprecated" not in trailing(await call.trailing_metadata())
