"""``switchboard generation GENERATION_ID``: one generation's ledger row, as metering holds it.

With just an API key it asks the router (generations of the key's own account only); with an
operator key, metering (any generation).
"""

from __future__ import annotations

import argparse

import grpc

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from switchboard_cli.account import api_key_metadata, router_unless_operator
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.output import Output, enum_label, format_time


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    generation = commands.add_parser(
        "generation", parents=[common], help="one generation's ledger row: usage, cost, timing"
    )
    generation.add_argument("generation_id", metavar="GENERATION_ID", help="e.g. gen-19a...")
    generation.set_defaults(handler=show_generation, service=router_unless_operator("metering"))


async def show_generation(
    args: argparse.Namespace, channel: grpc.aio.Channel, output: Output
) -> int:
    if args.service == "router":
        router = router_pb2_grpc.RouterServiceStub(channel)
        own = await router.GetGeneration(
            account_pb2.GetGenerationRequest(generation_id=args.generation_id),
            metadata=api_key_metadata(args),
            timeout=UNARY_TIMEOUT,
        )
        response = metering_pb2.GetGenerationResponse(
            generation=own.generation, tokens_per_second=own.tokens_per_second
        )
    else:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        request = metering_pb2.GetGenerationRequest(generation_id=args.generation_id)
        response = await stub.GetGeneration(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    for label, value in describe(response):
        output.line(f"{label + ':':<14}{value}")
    return 0


def describe(response: metering_pb2.GetGenerationResponse) -> list[tuple[str, str]]:
    """The row as label, value pairs, in the order a person reads a bill."""
    g = response.generation
    usage = g.usage
    status = enum_label(metering_pb2.GenerationStatus.Name(g.status), "GENERATION_STATUS_")
    finish = enum_label(common_pb2.FinishReason.Name(g.finish_reason), "FINISH_REASON_")
    tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion"
    details = [
        f"{usage.cached_tokens} cached" if usage.cached_tokens else "",
        f"{usage.cache_write_tokens} cache-write" if usage.cache_write_tokens else "",
        f"{usage.reasoning_tokens} reasoning" if usage.reasoning_tokens else "",
        "estimated" if usage.estimated else "",
    ]
    if extra := ", ".join(d for d in details if d):
        tokens += f" ({extra})"
    speed = f", {response.tokens_per_second:.1f} tokens/s" if response.tokens_per_second else ""
    native = f" ({g.native_finish_reason})" if g.native_finish_reason else ""
    return [
        ("generation", g.generation_id),
        ("created", f"{format_time(g.create_time)} UTC"),
        ("key", f"{g.key_id} (account {g.account_id})"),
        ("model", g.model_id),
        ("provider", f"{g.provider_id}, endpoint {g.endpoint_id}, attempt {g.attempt}"),
        ("status", f"{status}, finish {finish}{native}"),
        ("tokens", tokens),
        ("cost", f"{g.cost_usd or '0'} USD"),
        (
            "timing",
            f"{g.latency_ms} ms, first token after {g.time_to_first_token_ms} ms{speed}",
        ),
    ]
