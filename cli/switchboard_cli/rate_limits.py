"""Rate limits: ``--rpm``, ``--tpm`` and ``--concurrent`` of ``keys limits``, the
``accounts limits`` command, and how a key's or an account's rate limits read.

The metering service keeps them (``SetKeyLimits``, ``SetAccountLimits``); the routers enforce
them, a key's own and its account's (shared by all of its keys) both. 0 means no limit. The
CLI checks each value against the bound metering holds it to before sending anything.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.errors import CliError
from switchboard_cli.output import Output
from switchboard_core.rate_limits import (
    MAX_CONCURRENT,
    MAX_REQUESTS_PER_MINUTE,
    MAX_TOKENS_PER_MINUTE,
)


@dataclass(frozen=True, slots=True)
class Limit:
    """One rate limit: its option, its RateLimits field, its bound and how it reads."""

    option: str
    field: str
    bound: int
    unit: str  # "600 requests/min"
    help: str


LIMITS = (
    Limit(
        "rpm", "requests_per_minute", MAX_REQUESTS_PER_MINUTE, "requests/min", "requests per minute"
    ),
    Limit(
        "tpm",
        "tokens_per_minute",
        MAX_TOKENS_PER_MINUTE,
        "tokens/min",
        "tokens per minute (prompt and completion)",
    ),
    Limit(
        "concurrent", "max_concurrent", MAX_CONCURRENT, "concurrent", "requests in flight at once"
    ),
)
CLEAR = "--clear-rate-limits"
OPTIONS = [f"--{limit.option} N" for limit in LIMITS] + [CLEAR]
ACCOUNT_EPILOG = (
    "The account's three rate limits are replaced together: give all of --rpm, --tpm and "
    "--concurrent (0 for no limit), or --clear-rate-limits. They bound all of the account's "
    "keys together, on top of each key's own (`switchboard keys limits KEY_ID --rpm N`); "
    "routers apply a change on their next request."
)


def add_options(parser: argparse.ArgumentParser, whose: str) -> None:
    """``--rpm``, ``--tpm``, ``--concurrent`` and ``--clear-rate-limits`` on ``parser``."""
    group = parser.add_argument_group(f"rate limits of the {whose} (0: no limit)")
    for limit in LIMITS:
        group.add_argument(
            f"--{limit.option}",
            type=_bounded(limit),
            metavar="N",
            help=f"{limit.help}, at most {limit.bound:,}",
        )
    group.add_argument(CLEAR, action="store_true", help=f"no rate limits on the {whose}")


def _bounded(limit: Limit) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = -1
        if not 0 <= value <= limit.bound:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from 0 (no limit) to {limit.bound:,}, got {text!r}"
            )
        return value

    return parse


def named(args: argparse.Namespace) -> dict[str, int]:
    """The rate limits the command line names: RateLimits field -> value."""
    values = {limit.field: getattr(args, limit.option) for limit in LIMITS}
    found = {field: value for field, value in values.items() if value is not None}
    if found and args.clear_rate_limits:
        raise CliError(f"{CLEAR} sets no limit: it cannot go with {_options(found)}", 2)
    return found


def requested(
    args: argparse.Namespace, current: metering_pb2.RateLimits | None
) -> metering_pb2.RateLimits | None:
    """The rate limits to send: ``current`` with the named ones changed, none at all with
    ``--clear-rate-limits``; None when the command line names none (keep them)."""
    if args.clear_rate_limits:
        return metering_pb2.RateLimits()
    changes = named(args)
    if not changes:
        return None
    limits = metering_pb2.RateLimits()
    if current is not None:
        limits.CopyFrom(current)
    for field, value in changes.items():
        setattr(limits, field, value)
    return limits


def complete(args: argparse.Namespace) -> bool:
    """Whether the command line sets all three (or clears them): nothing needs reading."""
    return bool(args.clear_rate_limits) or len(named(args)) == len(LIMITS)


def summary(limits: metering_pb2.RateLimits) -> str:
    """``600 requests/min, 5 concurrent``; ``none`` without any."""
    parts = [f"{value} {limit.unit}" for limit in LIMITS if (value := getattr(limits, limit.field))]
    return ", ".join(parts) or "none"


def enforced(limits: metering_pb2.RateLimits) -> bool:
    return any(getattr(limits, limit.field) for limit in LIMITS)


def table_rows(key: metering_pb2.ApiKey) -> list[list[str]]:
    """Rows of RATE LIMIT, KEY, ACCOUNT for a key's own and its account's limits."""
    return [
        [
            limit.unit,
            _cell(getattr(key.rate_limits, limit.field)),
            _cell(getattr(key.account_rate_limits, limit.field)),
        ]
        for limit in LIMITS
    ]


def _cell(value: int) -> str:
    return str(value) if value else "none"


def _options(fields: dict[str, int]) -> str:
    return ", ".join(f"--{limit.option}" for limit in LIMITS if limit.field in fields)


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    accounts = commands.add_parser("accounts", help="set an account's rate limits")
    actions = accounts.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")
    limits = actions.add_parser(
        "limits",
        parents=[common],
        help="set or clear the rate limits all of an account's keys share",
        epilog=ACCOUNT_EPILOG,
    )
    limits.add_argument("account_id", metavar="ACCOUNT_ID", help="an existing account, e.g. acme")
    add_options(limits, "account")
    limits.set_defaults(handler=set_account_limits, service="metering")


async def set_account_limits(
    args: argparse.Namespace, channel: grpc.aio.Channel, output: Output
) -> int:
    if not complete(args):
        missing = [f"--{limit.option}" for limit in LIMITS if getattr(args, limit.option) is None]
        raise CliError(
            f"give {', '.join(missing)} too (0 for no limit), or {CLEAR}: an account's rate"
            " limits are replaced together",
            exit_code=2,
        )
    limits = requested(args, None)
    assert limits is not None  # complete() holds
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    request = metering_pb2.SetAccountLimitsRequest(account_id=args.account_id, rate_limits=limits)
    response = await stub.SetAccountLimits(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    output.line(f"rate limits of account {response.account_id} (shared by its keys):")
    for limit in LIMITS:
        output.line(f"  {limit.unit + ':':<14} {_cell(getattr(response.rate_limits, limit.field))}")
    return 0
