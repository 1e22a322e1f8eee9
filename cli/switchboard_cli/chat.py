"""``switchboard chat MODEL PROMPT``: one completion through the router, streamed."""

from __future__ import annotations

import argparse
import sys

import grpc

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_cli.connection import COMPLETION_TIMEOUT, bearer
from switchboard_cli.errors import CliError
from switchboard_cli.output import Output, enum_label

EFFORTS = {
    "none": router_pb2.Reasoning.EFFORT_NONE,
    "minimal": router_pb2.Reasoning.EFFORT_MINIMAL,
    "low": router_pb2.Reasoning.EFFORT_LOW,
    "medium": router_pb2.Reasoning.EFFORT_MEDIUM,
    "high": router_pb2.Reasoning.EFFORT_HIGH,
}
NO_KEY = (
    "no API key: pass --api-key or set SWITCHBOARD_API_KEY "
    "(create one with `switchboard keys create --account ACCOUNT`)"
)


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    chat = commands.add_parser("chat", parents=[common], help="ask a model; the answer streams")
    chat.add_argument("model", metavar="MODEL", help="e.g. switchboard/demo or openai/gpt-4o-mini")
    chat.add_argument("prompt", metavar="PROMPT", help='the user message ("-" reads stdin)')
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=int, metavar="N")
    chat.add_argument("--temperature", type=float, metavar="T")
    chat.add_argument(
        "--fallback", action="extend", nargs="+", default=[], metavar="MODEL",
        help="models to try, in order, when every endpoint of MODEL fails",
    )  # fmt: skip
    chat.add_argument(
        "--provider-order", action="extend", nargs="+", default=[], metavar="PROVIDER",
        help="provider ids to try first, in this order",
    )  # fmt: skip
    chat.add_argument(
        "--reasoning-effort", choices=sorted(EFFORTS), metavar="EFFORT",
        help="how much the model should reason: " + ", ".join(EFFORTS),
    )  # fmt: skip
    chat.add_argument(
        "--reasoning-tokens", type=int, metavar="N", help="a thinking budget in tokens"
    )
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    chat.set_defaults(handler=chat_command, service="router")


async def chat_command(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    if not args.api_key:
        raise CliError(NO_KEY, exit_code=2)
    if args.prompt == "-":
        output.stop_spinner()  # the user may be typing the prompt on this terminal
    request = build_request(args)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    metadata = bearer(args.api_key)
    if args.no_stream:
        # The two requests carry the same fields under the same numbers.
        unary = router_pb2.CreateCompletionRequest.FromString(request.SerializeToString())
        response = await stub.CreateCompletion(unary, metadata=metadata, timeout=COMPLETION_TIMEOUT)
        return _print_whole(response, output)
    return await _stream(stub, request, metadata, output)


def build_request(args: argparse.Namespace) -> router_pb2.StreamCompletionRequest:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    messages = []
    if args.system:
        messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=args.system))
    messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt))
    request = router_pb2.StreamCompletionRequest(
        model=args.model, messages=messages, fallback_models=args.fallback
    )
    if args.max_tokens is not None:
        request.max_tokens = args.max_tokens
    if args.temperature is not None:
        request.temperature = args.temperature
    if args.provider_order:
        request.provider.order.extend(args.provider_order)
    if args.reasoning_effort is not None:
        request.reasoning.effort = EFFORTS[args.reasoning_effort]
    if args.reasoning_tokens is not None:
        request.reasoning.max_tokens = args.reasoning_tokens
    return request


async def _stream(
    stub: router_pb2_grpc.RouterServiceAsyncStub,
    request: router_pb2.StreamCompletionRequest,
    metadata: tuple[tuple[str, str], ...],
    output: Output,
) -> int:
    start, end = router_pb2.CompletionStart(), None
    last = "\n"
    aside = ""  # "reasoning" or "refusal" while one is being written to stderr
    try:
        async for event in stub.StreamCompletion(request, metadata=metadata):
            if output.json:
                output.emit(event, indent=None)
            kind = event.WhichOneof("event")
            if kind == "start":
                start = event.start
            elif kind != "delta" or output.json:
                pass
            elif event.delta.reasoning or event.delta.refusal:
                # Reasoning and refusals go to stderr, so that stdout holds only the answer.
                label = "reasoning" if event.delta.reasoning else "refusal"
                if aside != label:
                    output.write_note(("\n" if aside else "") + f"[{label}] ")
                    aside = label
                output.write_note(event.delta.reasoning or event.delta.refusal)
            elif event.delta.text:
                if aside:
                    output.write_note("\n")
                    aside = ""
                output.write(event.delta.text)
                last = event.delta.text[-1]
            if kind == "end":
                end = event.end
    finally:
        if aside:
            output.write_note("\n")
        if last != "\n":
            output.write("\n")
    if end is None:
        raise CliError("the stream ended without its final message (no usage or cost)")
    if not output.json:
        output.note(summary(start.generation_id, start.model, start.provider, end))
    return 0


def _print_whole(response: router_pb2.CreateCompletionResponse, output: Output) -> int:
    if output.json:
        output.emit(response)
        return 0
    if response.reasoning:
        output.note(f"[reasoning] {response.reasoning}")
    if response.refusal:
        output.note(f"[refusal] {response.refusal}")
    output.line(response.text)
    end = router_pb2.CompletionEnd(
        finish_reason=response.finish_reason, usage=response.usage, cost_usd=response.cost_usd
    )
    output.note(summary(response.generation_id, response.model, response.provider, end))
    return 0


def summary(generation_id: str, model: str, provider: str, end: router_pb2.CompletionEnd) -> str:
    """One line for stderr; the cost is the router's exact decimal string."""
    usage = end.usage
    tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
    extra = [
        f"{usage.cached_tokens} cached" if usage.cached_tokens else "",
        f"{usage.reasoning_tokens} reasoning" if usage.reasoning_tokens else "",
        "estimated" if usage.estimated else "",
    ]
    if details := ", ".join(part for part in extra if part):
        tokens += f" ({details})"
    finish = enum_label(common_pb2.FinishReason.Name(end.finish_reason), "FINISH_REASON_")
    return (
        f"[{generation_id}] model {model} via {provider} | finish {finish} | {tokens}"
        f" | cost {end.cost_usd or 'unknown'} USD"
    )
