"""``switchboard health [SERVICE]``: the standard grpc.health.v1 check (also the compose
probe); without SERVICE, of all three services, each reported on its own line."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard_cli.connection import DEFAULT_ADDRESSES, Credentials, Target, open_channel
from switchboard_cli.errors import describe_rpc_error
from switchboard_cli.output import Output

HEALTH_TIMEOUT = 5.0
SERVICES = ("router", "catalog", "metering")
# A service that could not be asked at all.
UNREACHABLE = "UNREACHABLE"


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    health = commands.add_parser(
        "health", parents=[common], help="is a service serving? (all three without SERVICE)"
    )
    health.add_argument(
        "service",
        nargs="?",
        default=None,
        choices=sorted(DEFAULT_ADDRESSES),
        metavar="SERVICE",
        help="router, catalog or metering (default: all three)",
    )
    health.set_defaults(handler=health_command, every_service=health_of_all)


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
        output.status_line(f"{target.service} at {target.address}: ", status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


async def check(target: Target, credentials: Credentials) -> dict[str, Any]:
    """One service's status, or why it could not be asked."""
    report: dict[str, Any] = {"service": target.service, "address": target.address}
    try:
        async with open_channel(target, credentials) as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT
            )
    except grpc.aio.AioRpcError as error:
        unreachable = error.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        report["status"] = UNREACHABLE if unreachable else error.code().name
        report["error"] = describe_rpc_error(error, target)
        return report
    report["status"] = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return report


async def health_of_all(args: argparse.Namespace, credentials: Credentials, output: Output) -> int:
    """Every service at once; 0 when all three are SERVING, else 1."""
    targets = [Target(service, getattr(args, service)) for service in SERVICES]
    reports = await asyncio.gather(*(check(target, credentials) for target in targets))
    if output.json:
        output.emit(list(reports))
    else:
        for report in reports:  # as for one service; why one is unreachable on stderr
            output.status_line(f"{report['service']} at {report['address']}: ", report["status"])
            if "error" in report:
                output.note(f"  {report['error']}")
    return 0 if all(report["status"] == "SERVING" for report in reports) else 1
