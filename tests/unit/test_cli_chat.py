"""``switchboard chat`` against an in-process fake router."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import grpc
import pytest
from google.rpc import error_details_pb2

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from tests.fakes.cli_servers import (
    FlushRecorder,
    RouterCompletionsOnly,
    abort,
    cli,
    rich_status,
    serving,
)

SECRET = "sk-sb-v1-TEST-secret-never-printed"
Event = router_pb2.StreamCompletionResponse


class FakeRouter(RouterCompletionsOnly, router_pb2_grpc.RouterServiceServicer):
    def __init__(self, deltas: list[str], *, fail: grpc.Status | None = None) -> None:
        self.deltas = deltas
        self.fail = fail
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.requests: list[router_pb2.StreamCompletionRequest] = []
        self.unary_requests: list[router_pb2.CreateCompletionRequest] = []
        self.metadata: list[dict[str, str | bytes]] = []

    def _record(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        self.metadata.append(dict(context.invocation_metadata() or ()))

    async def StreamCompletion(
        self,
        request: router_pb2.StreamCompletionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[Event]:
        self._record(context)
        self.requests.append(request)
        yield Event(
            start=router_pb2.CompletionStart(
                generation_id="gen-1", model=request.model, provider="demo"
            )
        )
        for thought in self.reasoning:
            yield Event(delta=router_pb2.CompletionDelta(reasoning=thought))
        for text in self.refusal:
            yield Event(delta=router_pb2.CompletionDelta(refusal=text))
        for text in self.deltas:
            yield Event(delta=router_pb2.CompletionDelta(text=text))
            await asyncio.sleep(0)
        if self.fail is not None:
            await abort(context, self.fail)
        yield Event(end=_end())

    async def CreateCompletion(
        self,
        request: router_pb2.CreateCompletionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> router_pb2.CreateCompletionResponse:
        self._record(context)
        self.unary_requests.append(request)
        if self.fail is not None:
            await abort(context, self.fail)
        end = _end()
        return router_pb2.CreateCompletionResponse(
            generation_id="gen-2", model=request.model, provider="demo", text="".join(self.deltas),
            finish_reason=end.finish_reason, usage=end.usage, cost_usd=end.cost_usd,
        )  # fmt: skip


def _end() -> router_pb2.CompletionEnd:
    usage = common_pb2.Usage(prompt_tokens=12, completion_tokens=3, cached_tokens=2)
    return router_pb2.CompletionEnd(
        finish_reason=common_pb2.FINISH_REASON_STOP, usage=usage, cost_usd="0.000000105"
    )


def _router(fake: FakeRouter) -> AbstractAsyncContextManager[str]:
    return serving(router_pb2_grpc.add_RouterServiceServicer_to_server, fake)


async def test_chat_streams_deltas_in_order_and_prints_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRouter(["Hel", "lo, ", "world"])
    stdout = FlushRecorder()
    monkeypatch.setattr("sys.stdout", stdout)
    async with _router(fake) as address:
        code = await cli(
            "--router", address, "chat", "switchboard/demo", "hi there", "--api-key", SECRET,
            "--system", "be brief", "--max-tokens", "64", "--temperature", "0.5",
            "--fallback", "a/b", "c/d", "--provider-order", "demo",
        )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert stdout.getvalue() == "Hello, world\n"
    assert stdout.flushed[:3] == ["Hel", "Hello, ", "Hello, world"]  # flushed delta by delta
    assert "gen-1" in err
    assert "switchboard/demo" in err
    assert "demo" in err
    assert "finish stop" in err
    assert "12 prompt + 3 completion" in err
    assert "2 cached" in err
    assert "0.000000105 USD" in err  # the router's exact string, never a float
    assert SECRET not in err
    assert SECRET not in stdout.getvalue()
    assert fake.metadata[0]["authorization"] == f"Bearer {SECRET}"
    request = fake.requests[0]
    assert [(m.role, m.content) for m in request.messages] == [
        (common_pb2.ROLE_SYSTEM, "be brief"),
        (common_pb2.ROLE_USER, "hi there"),
    ]
    assert (request.max_tokens, request.temperature) == (64, 0.5)
    assert list(request.fallback_models) == ["a/b", "c/d"]
    assert list(request.provider.order) == ["demo"]


async def test_chat_without_options_leaves_optional_fields_unset() -> None:
    fake = FakeRouter(["ok"])
    async with _router(fake) as address:
        env = {"SWITCHBOARD_API_KEY": SECRET, "SWITCHBOARD_ROUTER_ADDR": address}
        assert await cli("chat", "m/x", "hi", env=env) == 0
    request = fake.requests[0]
    assert not request.HasField("max_tokens")
    assert not request.HasField("temperature")
    assert not request.HasField("provider")
    assert fake.metadata[0]["authorization"] == f"Bearer {SECRET}"


async def test_no_stream_uses_create_completion(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeRouter(["whole ", "answer"])
    async with _router(fake) as address:
        code = await cli(
            "--router", address, "--api-key", SECRET, "chat", "m/x", "q", "--no-stream"
        )
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "whole answer\n"
    assert "gen-2" in err
    assert "0.000000105 USD" in err
    assert len(fake.unary_requests) == 1
    assert not fake.requests
    assert fake.unary_requests[0].messages[0].content == "q"


async def test_invalid_argument_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="max_tokens", description="must be at least 1"
    )
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "request is invalid",
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="switchboard.dev"),
        error_details_pb2.BadRequest(field_violations=[violation]),
    )
    async with _router(FakeRouter([], fail=status)) as address:
        code = await cli(
            "--router", address, "--api-key", SECRET, "chat", "m/x", "q", "--no-stream"
        )
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1  # one line
    assert "INVALID_ARGUMENT" in err
    assert "request is invalid" in err
    assert "max_tokens: must be at least 1" in err
    assert SECRET not in err


async def test_error_midway_keeps_the_text_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromSeconds(2)
    status = rich_status(grpc.StatusCode.UNAVAILABLE, "upstream reset the stream", retry)
    async with _router(FakeRouter(["partial"], fail=status)) as address:
        code = await cli("--router", address, "--api-key", SECRET, "chat", "m/x", "q")
    out, err = capsys.readouterr()
    assert code == 1
    assert out == "partial\n"
    assert "UNAVAILABLE: upstream reset the stream" in err
    assert "retry in 2s" in err
    assert "cannot reach" not in err  # the router answered: this is not a connection problem


async def test_json_streams_one_event_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    async with _router(FakeRouter(["a", "b"])) as address:
        code = await cli("--router", address, "--api-key", SECRET, "chat", "m/x", "q", "--json")
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert err == ""
    assert [next(iter(e)) for e in events] == ["start", "delta", "delta", "end"]
    assert events[-1]["end"]["cost_usd"] == "0.000000105"


async def test_missing_api_key_says_how_to_set_it(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeRouter(["never"])
    async with _router(fake) as address:
        code = await cli("--router", address, "chat", "m/x", "q")
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "--api-key" in err
    assert "SWITCHBOARD_API_KEY" in err
    assert not fake.requests


async def test_reasoning_goes_to_stderr_and_the_answer_alone_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeRouter(["4"])
    fake.reasoning = ["add the ", "units"]
    async with _router(fake) as address:
        code = await cli("--router", address, "chat", "m/r1", "2+2?", "--api-key", SECRET)
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "4\n"
    assert err.startswith("[reasoning] add the units\n")


async def test_reasoning_options_are_sent_and_a_refusal_goes_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeRouter([])
    fake.refusal = ["I can't ", "help with that."]
    async with _router(fake) as address:
        code = await cli(
            "--router", address, "--api-key", SECRET, "chat", "m/x", "q",
            "--reasoning-effort", "high",
        )  # fmt: skip
        assert await cli(
            "--router", address, "--api-key", SECRET, "chat", "m/x", "q",
            "--reasoning-tokens", "2048",
        ) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert "[refusal] I can't help with that." in err
    assert "I can't" not in out
    first, second = fake.requests
    assert first.reasoning.effort == router_pb2.Reasoning.EFFORT_HIGH
    assert not first.reasoning.HasField("max_tokens")
    assert second.reasoning.max_tokens == 2048
    assert not second.reasoning.effort
