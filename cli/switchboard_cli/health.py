"""``switchboard health SERVICE``: the standard grpc.health.v1 check (also the compose probe)."""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard_cli.connection import DEFAULT_ADDRESSES, Target
from switchboard_cli.output import Output

HEALTH_TIMEOUT = 5.0


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    health = commands.add_parser("health", parents=[common], help="is a service serving?")
    health.add_argument("service", choices=sorted(DEFAULT_ADDRESSES), metavar="SERVICE",
                        help="router, catalog or metering")  # fmt: skip
    health.set_defaults(handler=health_command)


async def health_command(
    args: argparse.Namespace, channel: grpc.aio.Channel, output: Output
) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    target = Target(args.service, getattr(args, args.service))
    if output.json:
        output.emit({"service": target.service, "address": target.address, "status": status})
    else:
        output.line(f"{target.service} at {target.address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1
