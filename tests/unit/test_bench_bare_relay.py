"""The bare-relay baseline of ``make bench`` (bench/bare_relay.py) against the real demo
upstream on real sockets: every chunk its own gRPC message, the words and usage intact."""

from __future__ import annotations

import grpc

from bench.bare_relay import start
from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_demo import upstream
from switchboard_demo.upstream import DemoSettings, reply_words


async def test_each_chunk_is_its_own_message_with_the_usage_at_the_end() -> None:
    runner, demo_port = await upstream.start("127.0.0.1", 0, DemoSettings(reply_tokens=7))
    url = f"http://127.0.0.1:{demo_port}/v1/chat/completions"
    server, relay, port = await start(0, url, "demo")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            request = router_pb2.StreamCompletionRequest(
                model="switchboard/demo",
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi there")],
            )
            kinds: list[str] = []
            deltas: list[str] = []
            end = router_pb2.CompletionEnd()
            async for message in stub.StreamCompletion(request, timeout=10):
                kind = message.WhichOneof("event")
                assert kind is not None
                kinds.append(kind)
                if kind == "delta":
                    deltas.append(message.delta.text)
                elif kind == "end":
                    end = message.end
    finally:
        await server.stop(None)
        await relay.close()
        await runner.cleanup()
    assert kinds == ["start"] + ["delta"] * 7 + ["end"]
    assert "".join(deltas) == " ".join(reply_words(7))
    assert end.usage.completion_tokens == 7
    assert end.usage.prompt_tokens == 5  # two words and the template's 3
    assert end.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_an_upstream_error_ends_the_call_unavailable() -> None:
    runner, demo_port = await upstream.start("127.0.0.1", 0, DemoSettings())
    url = f"http://127.0.0.1:{demo_port}/v1/chat/completions"
    server, relay, port = await start(0, url, "no-such-model")  # the demo answers 404
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            request = router_pb2.StreamCompletionRequest(model="switchboard/demo")
            call = stub.StreamCompletion(request, timeout=10)
            try:
                async for _ in call:
                    raise AssertionError("no message expected")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "404" in (error.details() or "")
            else:
                raise AssertionError("the call should have failed")
    finally:
        await server.stop(None)
        await relay.close()
        await runner.cleanup()
