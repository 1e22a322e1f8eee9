"""``switchboard audit``: who changed what, from the audit logs of the catalog and metering.

Each service keeps the log of its own admin changes (``switchboard.audit.v1.AuditService``,
scope ``audit:read``); ``--service all`` (the default) asks both and merges their events,
newest first. At most ``--limit`` events are shown, the newest; a note says when there are
more. ``--actor`` and ``--target`` take the full name (``operator:opk_...``,
``account:acme``) or just the id; ``--rpc`` a method name (``AddCredits``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from switchboard.audit.v1 import audit_pb2, audit_pb2_grpc
from switchboard_cli.connection import UNARY_TIMEOUT, Credentials, Target, open_channel
from switchboard_cli.errors import CliError, describe_rpc_error
from switchboard_cli.output import Output, format_time, to_dict
from switchboard_cli.usage import parse_since

SERVICES = ("catalog", "metering")
DEFAULT_LIMIT = 100
MAX_PAGE_SIZE = 500
# The longest change summary shown in the table (--json shows it whole).
SUMMARY_CHARS = 100


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    audit = commands.add_parser(
        "audit", parents=[common], help="admin changes: who changed what, when (audit:read)"
    )
    audit.add_argument(
        "--service", dest="audit_service", choices=[*SERVICES, "all"], default="all",
        help="whose log to read (default: all, merged newest first)",
    )  # fmt: skip
    audit.add_argument(
        "--since", type=parse_since, metavar="WHEN",
        help="a span back from now (30m, 12h, 7d, 2w) or an ISO date; default: all",
    )  # fmt: skip
    audit.add_argument("--actor", default="", help="e.g. operator:opk_0123... or opk_0123...")
    audit.add_argument("--rpc", default="", help="a method name, e.g. AddCredits")
    audit.add_argument("--target", default="", help="e.g. account:acme, acme or key_0123...")
    audit.add_argument(
        "--limit", type=_positive, default=DEFAULT_LIMIT, metavar="N",
        help=f"show at most the newest N events (default {DEFAULT_LIMIT})",
    )  # fmt: skip
    # The metering channel is the command's own; the catalog's is opened when asked for.
    audit.set_defaults(handler=audit_command, service="metering")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _request(args: argparse.Namespace) -> audit_pb2.ListAuditEventsRequest:
    request = audit_pb2.ListAuditEventsRequest(
        actor=args.actor, rpc=args.rpc, target=args.target, page_size=min(args.limit, MAX_PAGE_SIZE)
    )
    if args.since is not None:
        request.start_time.FromDatetime(args.since)
    return request


async def _newest(
    channel: grpc.aio.Channel, request: audit_pb2.ListAuditEventsRequest, limit: int
) -> tuple[list[audit_pb2.AuditEvent], bool]:
    """Up to ``limit`` of one service's newest events, and whether it has more."""
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    events: list[audit_pb2.AuditEvent] = []
    while True:
        page = await stub.ListAuditEvents(request, timeout=UNARY_TIMEOUT)
        events.extend(page.events)
        if len(events) >= limit or not page.next_page_token:
            return events[:limit], len(events) > limit or bool(page.next_page_token)
        request.page_token = page.next_page_token


async def _from(
    service: str, args: argparse.Namespace, channel: grpc.aio.Channel | None
) -> tuple[list[audit_pb2.AuditEvent], bool]:
    """``service``'s events, on ``channel`` or on a channel of its own."""
    target = Target(service, getattr(args, service))
    try:
        if channel is not None:
            return await _newest(channel, _request(args), args.limit)
        async with open_channel(target, Credentials.from_args(args)) as own:
            return await _newest(own, _request(args), args.limit)
    except grpc.aio.AioRpcError as error:
        raise CliError(describe_rpc_error(error, target)) from None


async def audit_command(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    services = SERVICES if args.audit_service == "all" else (args.audit_service,)
    events: list[audit_pb2.AuditEvent] = []
    more = False
    for service in services:
        found, has_more = await _from(service, args, channel if service == "metering" else None)
        events.extend(found)
        more |= has_more
    events = merged(events)
    more |= len(events) > args.limit
    events = events[: args.limit]
    if output.json:
        output.emit({"events": [to_dict(event) for event in events]})
    elif events:
        output.table(["TIME (UTC)", "SERVICE", "ACTOR", "RPC", "TARGET", "CHANGE"], rows(events))
    else:
        output.note("no audit events match")
    if more:
        output.note(f"showing the newest {args.limit}; more match (use --limit or --since)")
    return 0


def merged(events: Sequence[audit_pb2.AuditEvent]) -> list[audit_pb2.AuditEvent]:
    """Newest first across services (each service's ids order its own events)."""
    return sorted(
        events,
        key=lambda e: (e.occur_time.seconds, e.occur_time.nanos, e.service, e.id),
        reverse=True,
    )


def rows(events: Sequence[audit_pb2.AuditEvent]) -> list[list[str]]:
    return [
        [
            format_time(event.occur_time),
            event.service,
            event.actor,
            event.rpc.rpartition("/")[2],
            event.target,
            summary(json_format.MessageToDict(event.change)),
        ]
        for event in events
    ]


def summary(change: dict[str, Any]) -> str:
    """``account_id=acme amount_usd=25 -> api_key.id=key_...``: the values set, by name, cut."""
    parts = [f"{k}={v}" for k, v in _leaves(change.get("request", {}))]
    created = [f"{k}={v}" for k, v in _leaves(change.get("result", {}))]
    if created:
        parts += ["->", *created]
    if change.get("truncated"):
        parts.append(f"(too large to record: {change.get('size_bytes')} bytes)")
    text = " ".join(parts)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [leaf for k, v in sorted(value.items()) for leaf in _leaves(v, f"{prefix}{k}.")]
    if value in ("", [], {}, None, False, 0):
        return []
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Struct numbers are doubles
    shown = ",".join(map(str, value)) if isinstance(value, list) else json.dumps(value)
    return [(prefix.rstrip("."), shown.strip('"'))]
