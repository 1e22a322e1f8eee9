"""The bare-relay baseline of ``make bench``: the least a Python gRPC-to-SSE relay can do.

``python -m bench.bare_relay --port P --upstream URL`` serves the router's own
``RouterService.StreamCompletion`` (so the bench drives it with the same client) in plaintext
on uvloop: each request becomes one ``POST`` to an OpenAI-compatible upstream (aiohttp, one
pooled session), each SSE ``data:`` line is parsed with orjson and each content chunk goes out
as its own gRPC message (no coalescing), then one ``end`` message with the usage. No
authentication, limits, routing, metering or ledger: the floor the router is measured against
(issue 12). Runs as its own process so its CPU is measured like the router's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import grpc
import orjson
import uvloop

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2

FINISH: dict[str, common_pb2.FinishReason.ValueType] = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
}
SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=10)
ROLES = {common_pb2.ROLE_USER: "user", common_pb2.ROLE_SYSTEM: "system"}


class BareRelay:
    def __init__(self, upstream: str, model: str) -> None:
        self.upstream = upstream
        self.model = model
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0)
            self.session = aiohttp.ClientSession(connector=connector, timeout=UPSTREAM_TIMEOUT)
        return self.session

    async def stream(
        self,
        request: router_pb2.StreamCompletionRequest,
        context: grpc.aio.ServicerContext[
            router_pb2.StreamCompletionRequest, router_pb2.StreamCompletionResponse
        ],
    ) -> AsyncIterator[router_pb2.StreamCompletionResponse]:
        body = orjson.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": ROLES.get(m.role, "user"), "content": m.content}
                    for m in request.messages
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        headers = {"Content-Type": "application/json"}
        async with self._session().post(self.upstream, data=body, headers=headers) as response:
            if response.status != 200:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream HTTP {response.status}")
            end = router_pb2.CompletionEnd()
            started = False
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = orjson.loads(line[6:])
                if not started:
                    started = True
                    yield router_pb2.StreamCompletionResponse(
                        start=router_pb2.CompletionStart(
                            generation_id=chunk.get("id", ""), model=request.model
                        )
                    )
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield router_pb2.StreamCompletionResponse(
                            delta=router_pb2.CompletionDelta(text=text)
                        )
                    reason = choice.get("finish_reason")
                    if reason:
                        end.finish_reason = FINISH.get(reason, common_pb2.FINISH_REASON_UNSPECIFIED)
                        end.native_finish_reason = reason
                usage = chunk.get("usage")
                if usage:
                    end.usage.prompt_tokens = usage["prompt_tokens"]
                    end.usage.completion_tokens = usage["completion_tokens"]
            yield router_pb2.StreamCompletionResponse(end=end)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


async def start(port: int, upstream: str, model: str) -> tuple[grpc.aio.Server, BareRelay, int]:
    """The relay serving on ``port`` (0: any free one); returns the server, the relay (to
    close) and the bound port."""
    server = grpc.aio.server()
    relay = BareRelay(upstream, model)
    handler = grpc.unary_stream_rpc_method_handler(
        relay.stream,
        request_deserializer=router_pb2.StreamCompletionRequest.FromString,
        response_serializer=router_pb2.StreamCompletionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"StreamCompletion": handler}),)
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, relay, bound


async def serve(port: int, upstream: str, model: str) -> None:
    server, relay, bound = await start(port, upstream, model)
    print(f"bare relay listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)
    await relay.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the chat completions URL")
    parser.add_argument("--model", default="demo", help="the upstream's model name")
    args = parser.parse_args()
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    uvloop.run(serve(args.port, args.upstream, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
