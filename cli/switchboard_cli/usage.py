"""``switchboard usage [--key KEY_ID | --account ACCOUNT | --whole-account]``: usage by time
bucket, model and provider, of one key or of all of an account's keys.

``--key`` and ``--account`` are operators' (metering, with an operator key, any account).
Without them the router answers for the API key's own usage, or with ``--whole-account`` for
all of its account's keys together.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from switchboard_cli.account import api_key_metadata
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.output import Output, format_time

BUCKETS = {"hour": metering_pb2.TIME_BUCKET_HOUR, "day": metering_pb2.TIME_BUCKET_DAY}
BUCKET_FORMATS = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}
_SPAN = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    usage = commands.add_parser(
        "usage", parents=[common], help="usage and spend of a key or an account"
    )
    owner = usage.add_mutually_exclusive_group()
    owner.add_argument(
        "--key", metavar="KEY_ID", help="any key, e.g. key_0123456789abcdef (operator key)"
    )
    owner.add_argument("--account", help="all of any account's keys together (operator key)")
    owner.add_argument(
        "--whole-account", action="store_true",
        help="all of your API key's account's keys together (default: your key alone)",
    )  # fmt: skip
    usage.add_argument("--bucket", choices=sorted(BUCKETS), default="day")
    usage.add_argument(
        "--since", type=parse_since, metavar="WHEN",
        help="a span back from now (30m, 12h, 7d, 2w) or an ISO date; default 30 days",
    )  # fmt: skip
    usage.set_defaults(handler=usage_command, service=_service)


def _service(args: argparse.Namespace) -> str:
    """Metering for an operator naming a key or an account; else the router (API key)."""
    return "metering" if args.key or args.account else "router"


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d`` -> seven days before now; ``2024-05-01`` or an ISO time (UTC unless it says)."""
    now = now or datetime.now(UTC)
    if match := _SPAN.match(text.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a span like 7d or 12h nor an ISO date like 2024-05-01"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _query(
    args: argparse.Namespace, channel: grpc.aio.Channel
) -> metering_pb2.QueryUsageResponse | account_pb2.QueryUsageResponse:
    start = timestamp_pb2.Timestamp()
    if args.since is not None:
        start.FromDatetime(args.since)
    if args.service == "router":
        scope = (
            account_pb2.USAGE_SCOPE_ACCOUNT if args.whole_account else account_pb2.USAGE_SCOPE_KEY
        )
        own = account_pb2.QueryUsageRequest(bucket=BUCKETS[args.bucket], scope=scope)
        if args.since is not None:
            own.start_time.CopyFrom(start)
        router = router_pb2_grpc.RouterServiceStub(channel)
        return await router.QueryUsage(own, metadata=api_key_metadata(args), timeout=UNARY_TIMEOUT)
    request = metering_pb2.QueryUsageRequest(
        key_id=args.key or "", account_id=args.account or "", bucket=BUCKETS[args.bucket]
    )
    if args.since is not None:
        request.start_time.CopyFrom(start)
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    return await stub.QueryUsage(request, timeout=UNARY_TIMEOUT)


async def usage_command(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    response = await _query(args, channel)
    if output.json:
        output.emit(response)
        return 0
    if response.rows:
        pattern = BUCKET_FORMATS[args.bucket]
        rows = [_row(row, pattern) for row in response.rows]
        headers = ["BUCKET (UTC)", "MODEL", "PROVIDER", "REQUESTS", "PROMPT TOK"]
        headers += ["COMPLETION TOK", "CACHED TOK", "REASONING TOK", "COST USD"]
        output.table(headers, rows, numeric={3, 4, 5, 6, 7, 8})
        output.line()
    else:
        whose = args.key or args.account or ("your account" if args.whole_account else "your key")
        output.note(f"no usage for {whose} in this period")
    output.line(
        f"total: {response.total_requests} requests, {response.total_prompt_tokens} prompt"
        f" tokens, {response.total_completion_tokens} completion tokens,"
        f" {response.total_cost_usd or '0'} USD"
    )
    return 0


def _row(row: metering_pb2.UsageRow, pattern: str) -> list[str]:
    return [
        format_time(row.bucket_start, pattern),
        row.model_id,
        row.provider_id,
        str(row.requests),
        str(row.prompt_tokens),
        str(row.completion_tokens),
        str(row.cached_tokens),
        str(row.reasoning_tokens),
        row.cost_usd or "0",
    ]
