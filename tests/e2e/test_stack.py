"""The services as real processes over real sockets: a key, a streamed completion, and its
exact usage and cost in the ledger; errors that name their cause; cancellation metered;
graceful shutdown that lets an in-flight stream finish."""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_demo.upstream import reply_words
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth, ledger_entry

pytestmark = [pytest.mark.e2e]

DEMO = "switchboard/demo"
# The demo model's seeded prices, USD per million tokens.
PROMPT_PRICE, COMPLETION_PRICE = Decimal(1), Decimal(2)


def chat(text: str, **kwargs: object) -> router_pb2.StreamCompletionRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)
    return router_pb2.StreamCompletionRequest(model=DEMO, messages=[message], **kwargs)  # type: ignore[arg-type]


def expected_cost(prompt: int, completion: int) -> Decimal:
    return (prompt * PROMPT_PRICE + completion * COMPLETION_PRICE) / 1_000_000


async def test_streamed_completion_is_relayed_and_metered_exactly(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
) -> None:
    messages = [
        m async for m in router.StreamCompletion(chat("Hello, Switchboard"), metadata=auth(api_key))
    ]
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds == ["start"] + ["delta"] * 20 + ["end"]
    start, end = messages[0].start, messages[-1].end
    assert (start.model, start.provider, start.endpoint_id) == (
        DEMO,
        "switchboard",
        "switchboard:" + DEMO,
    )
    assert "".join(m.delta.text for m in messages[1:-1]) == " ".join(reply_words(20))
    assert end.finish_reason == common_pb2.FINISH_REASON_STOP
    # "Hello, Switchboard": 2 words + 3 for the message; 20 completion words
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.estimated) == (
        5,
        20,
        False,
    )
    assert Decimal(end.cost_usd) == expected_cost(5, 20)

    row = await ledger_entry(metering, start.generation_id)
    assert row.key_id == api_key.api_key.id
    assert row.account_id == "e2e"
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (5, 20)
    assert row.cost_usd == end.cost_usd
    assert row.status == metering_pb2.GENERATION_STATUS_COMPLETED
    assert row.streamed
    assert 0 < row.time_to_first_token_ms <= row.latency_ms


async def test_unary_completion_and_usage_totals(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    key = await metering.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="e2e", name="unary")
    )
    replies = []
    for max_tokens in (3, 7):
        request = router_pb2.CreateCompletionRequest(
            model=DEMO,
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="one two")],
            max_tokens=max_tokens,
        )
        replies.append(await router.CreateCompletion(request, metadata=auth(key)))
    assert replies[0].text == " ".join(reply_words(3))
    assert replies[0].finish_reason == common_pb2.FINISH_REASON_LENGTH
    for reply in replies:
        await ledger_entry(metering, reply.generation_id)
    usage = await metering.QueryUsage(
        metering_pb2.QueryUsageRequest(key_id=key.api_key.id, bucket=metering_pb2.TIME_BUCKET_HOUR)
    )
    assert usage.total_requests == 2
    assert usage.total_prompt_tokens == 10
    assert usage.total_completion_tokens == 10
    assert Decimal(usage.total_cost_usd) == sum(Decimal(r.cost_usd) for r in replies)
    assert Decimal(usage.total_cost_usd) == expected_cost(10, 10)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


async def test_errors_are_clear_and_crash_nothing(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    stack: Stack,
) -> None:
    async def fails(
        request: router_pb2.StreamCompletionRequest, metadata: object
    ) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in router.StreamCompletion(request, metadata=metadata):  # type: ignore[arg-type]
                pass
        return caught.value

    missing = await fails(chat("hi"), ())
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in (missing.details() or "")
    wrong = await fails(chat("hi"), (("authorization", "Bearer sk-sb-v1-nope"),))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED

    bad = await fails(chat("hi", max_tokens=0, temperature=9.0), auth(api_key))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(bad)) == {"max_tokens", "temperature"}

    unknown = await fails(
        chat("hi").__class__(model="acme/nothing", messages=chat("hi").messages), auth(api_key)
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "acme/nothing" in (unknown.details() or "")

    key = await metering.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="e2e", name="revoked")
    )
    _ = [m async for m in router.StreamCompletion(chat("hi"), metadata=auth(key))]
    await metering.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=key.api_key.id))
    await asyncio.sleep(0.5)  # the router's key cache is 0.3 s in this stack
    revoked = await fails(chat("hi"), auth(key))
    assert revoked.code() == grpc.StatusCode.UNAUTHENTICATED

    # A megabyte for an 8k-context model: refused with the counts, before any upstream call.
    huge = await fails(chat("x" * 1_000_000), auth(api_key))
    assert huge.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1,000,000 bytes" in (huge.details() or "")
    assert "8,192 tokens" in (huge.details() or "")

    assert all(p.poll() is None for p in stack.processes.values())
    ok = [m async for m in router.StreamCompletion(chat("still here"), metadata=auth(api_key))]
    assert ok[-1].WhichOneof("event") == "end"


EOF = grpc.aio.EOF  # type: ignore[attr-defined]


async def read(call: Any) -> router_pb2.StreamCompletionResponse:
    """The next message of a streaming call, which must not have ended."""
    message = await call.read()
    assert message is not EOF
    assert isinstance(message, router_pb2.StreamCompletionResponse)
    return message


async def read_rest(call: Any) -> list[router_pb2.StreamCompletionResponse]:
    rest = []
    while (message := await call.read()) is not EOF:
        rest.append(message)
    return rest


async def test_a_cancelled_stream_is_metered_for_what_was_generated(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
) -> None:
    call = router.StreamCompletion(chat("cancel me"), metadata=auth(api_key))
    start = await read(call)
    deltas = [await read(call), await read(call)]
    assert all(d.WhichOneof("event") == "delta" for d in deltas)
    call.cancel()
    row = await ledger_entry(metering, start.start.generation_id)
    assert row.status == metering_pb2.GENERATION_STATUS_CANCELLED
    assert row.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert row.usage.estimated
    assert 1 <= row.usage.completion_tokens < 20
    assert Decimal(row.cost_usd) == expected_cost(
        row.usage.prompt_tokens, row.usage.completion_tokens
    )


async def test_sigterm_lets_an_inflight_stream_finish(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    stack: Stack,
) -> None:
    call = router.StreamCompletion(chat("finish me"), metadata=auth(api_key))
    first = await read(call)
    assert first.WhichOneof("event") == "start"
    stack.processes["router"].send_signal(signal.SIGTERM)
    rest = await read_rest(call)
    assert rest[-1].WhichOneof("event") == "end"
    assert sum(m.WhichOneof("event") == "delta" for m in rest) == 20
    router_process = stack.processes.pop("router")
    assert await asyncio.to_thread(router_process.wait, 15) == 0
