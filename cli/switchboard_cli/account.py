"""``switchboard key`` (or ``whoami``): the caller's own API key, through the router.

With just an API key (``--api-key``, ``SWITCHBOARD_API_KEY``), an end user reads their own
data on the router's public port: their key (this command), their generations, their usage and
the model list. Those commands ask the catalog or metering directly instead when an operator
key is given (``--admin-key``, ``SWITCHBOARD_ADMIN_KEY``): operators read any account's data
there. :func:`router_unless_operator` is that rule.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc

from switchboard.metering.v1 import metering_pb2
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from switchboard_cli import rate_limits
from switchboard_cli.budgets import WINDOWS, account_lines, window_row
from switchboard_cli.connection import UNARY_TIMEOUT, bearer
from switchboard_cli.errors import CliError
from switchboard_cli.output import Output, format_time

NO_API_KEY = (
    "no API key: pass --api-key or set SWITCHBOARD_API_KEY (operators: --admin-key or"
    " SWITCHBOARD_ADMIN_KEY, for any account's data)"
)


def router_unless_operator(admin_service: str) -> Callable[[argparse.Namespace], str]:
    """The service a read of one's own data goes to: ``admin_service`` with an operator key,
    else the router (with the API key)."""

    def choose(args: argparse.Namespace) -> str:
        return admin_service if args.admin_key else "router"

    return choose


def api_key_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The router's authentication metadata for the caller's API key."""
    if not args.api_key:
        raise CliError(NO_API_KEY, exit_code=2)
    return bearer(args.api_key)


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    key = commands.add_parser(
        "key",
        aliases=["whoami"],
        parents=[common],
        help="your API key: its limits, rate limits, expiry, allow-lists, spend and balance",
    )
    key.set_defaults(handler=show_key, service="router")


async def show_key(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    response = await stub.GetKey(
        account_pb2.GetKeyRequest(), metadata=api_key_metadata(args), timeout=UNARY_TIMEOUT
    )
    if output.json:
        output.emit(response)
        return 0
    for label, value in describe_key(response.api_key):
        output.line(f"{label + ':':<11}{value}")
    output.line()
    output.table(
        ["WINDOW", "LIMIT USD", "SPENT USD", "REMAINING USD"],
        [window_row(response.spend, window) for window in WINDOWS],
        numeric={1, 2, 3},
    )
    output.line(f"reserved: {response.spend.reserved_usd or '0'} USD (requests in flight)")
    output.line()
    # The key's own rate limits, and its account's, which all of the account's keys share.
    output.table(["RATE LIMIT", "KEY", "ACCOUNT"], rate_limits.table_rows(response.api_key))
    output.line()
    account_lines(output, response.account)
    return 0


def describe_key(key: metering_pb2.ApiKey) -> list[tuple[str, str]]:
    """A key's identity and rules as label, value pairs (never its secret)."""
    expires = f"{format_time(key.expire_time)} UTC" if key.HasField("expire_time") else "never"
    return [
        ("key", f"{key.id} ({key.prefix}...)" + (f" {key.name}" if key.name else "")),
        ("account", key.account_id),
        ("created", f"{format_time(key.create_time)} UTC"),
        ("expires", expires),
        ("models", ", ".join(key.allowed_models) or "any"),
        ("providers", ", ".join(key.allowed_providers) or "any"),
    ]
