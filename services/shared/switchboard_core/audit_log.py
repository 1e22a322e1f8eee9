"""The audit log in Postgres, and the ``AuditService`` that lists it.

Table ``audit_events`` (``switchboard_core/migrations/0001_audit_events.sql``): id (bigserial),
occurred_at, service, actor, rpc, target, change (jsonb), request_id. :func:`migrate_audit`
creates it in a service's database under the migration owner ``"audit"`` in
``schema_migrations``, so services that share a database create it once and share it; each
row names its service, and each service lists only its own rows. A trigger refuses UPDATE,
DELETE and TRUNCATE: rows are only ever inserted (:meth:`AuditLog.record`).

``ListAuditEvents`` (scope ``audit:read``) returns events newest first (by id), filtered by
time range, actor, RPC and target; an actor or target matches in full
(``"operator:opk_..."``) or by the id after its colon (``"opk_..."``), an RPC by its full
method or its method name (``"AddCredits"``). Page tokens carry the last id returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from switchboard.audit.v1 import audit_pb2, audit_pb2_grpc
from switchboard_core import paging
from switchboard_core.audit import AuditEvent
from switchboard_core.db import migrate
from switchboard_core.errors import InvalidArgument
from switchboard_core.server import Registration

SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
MIGRATIONS = "switchboard_core.migrations"
MIGRATION_OWNER = "audit"
# The longest actor, rpc or target filter accepted.
MAX_FILTER_CHARS = 256
# The largest id a bigserial can hold.
MAX_ID = 2**63 - 1

_INSERT = """
INSERT INTO audit_events (service, actor, rpc, target, change, request_id)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
"""
# Filters that are empty (or NULL) match everything.
_LIST = """
SELECT id, occurred_at, service, actor, rpc, target, change::text AS change, request_id
FROM audit_events
WHERE service = $1
  AND ($2::timestamptz IS NULL OR occurred_at >= $2)
  AND ($3::timestamptz IS NULL OR occurred_at < $3)
  AND ($4 = '' OR actor = $4 OR substr(actor, strpos(actor, ':') + 1) = $4)
  AND ($5 = '' OR rpc = $5 OR right(rpc, length($5) + 1) = '/' || $5)
  AND ($6 = '' OR target = $6 OR substr(target, strpos(target, ':') + 1) = $6)
  AND ($7::bigint IS NULL OR id < $7)
ORDER BY id DESC
LIMIT $8
"""

Context = grpc.aio.ServicerContext[Any, Any]


async def migrate_audit(pool: asyncpg.Pool) -> list[str]:
    """Create (or bring up to date) ``audit_events`` in ``pool``'s database."""
    return await migrate(pool, MIGRATION_OWNER, MIGRATIONS)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which events to list; empty strings and ``None`` match everything."""

    start: datetime | None = None
    end: datetime | None = None
    actor: str = ""
    rpc: str = ""
    target: str = ""
    page_size: int = paging.DEFAULT_PAGE_SIZE
    # Only events older than this id (the last one of the previous page).
    before_id: int | None = None


class AuditLog:
    """``service``'s audit events in Postgres: the sink of its server's
    :class:`~switchboard_core.audit.Auditor`, and what ``ListAuditEvents`` reads."""

    def __init__(self, pool: asyncpg.Pool, service: str) -> None:
        self._pool = pool
        self.service = service

    async def record(self, event: AuditEvent) -> None:
        await self._pool.execute(
            _INSERT,
            self.service,
            event.actor,
            event.rpc,
            event.target,
            event.change_json(),
            event.request_id,
        )

    async def list_page(self, query: AuditQuery) -> tuple[list[audit_pb2.AuditEvent], str]:
        """One page of events, newest first, and the next page's token ("" on the last)."""
        rows = await self._pool.fetch(
            _LIST,
            self.service,
            query.start,
            query.end,
            query.actor,
            query.rpc,
            query.target,
            query.before_id,
            query.page_size + 1,  # one more tells whether another page follows
        )
        page = rows[: query.page_size]
        token = paging.encode_token(str(page[-1]["id"])) if len(rows) > query.page_size else ""
        return [_to_proto(row) for row in page], token


def _to_proto(row: asyncpg.Record) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(
        id=row["id"],
        service=row["service"],
        actor=row["actor"],
        rpc=row["rpc"],
        target=row["target"],
        request_id=row["request_id"],
    )
    event.occur_time.FromDatetime(row["occurred_at"])
    event.change.update(json.loads(row["change"]))
    return event


def query_of(request: audit_pb2.ListAuditEventsRequest) -> AuditQuery:
    """The query a request asks for; INVALID_ARGUMENT naming every bad field."""
    problems: list[tuple[str, str]] = []
    start = (
        _time(request.start_time, "start_time", problems)
        if request.HasField("start_time")
        else None
    )
    end = _time(request.end_time, "end_time", problems) if request.HasField("end_time") else None
    if start is not None and end is not None and start >= end:
        problems.append(("start_time", "must be before end_time"))
    for name in ("actor", "rpc", "target"):
        if len(getattr(request, name)) > MAX_FILTER_CHARS:
            problems.append((name, f"at most {MAX_FILTER_CHARS} characters"))
    size = paging.DEFAULT_PAGE_SIZE
    try:
        size = paging.page_size(request.page_size)
    except InvalidArgument as error:
        problems.extend(error.violations)
    before_id: int | None = None
    try:
        last = paging.decode_token(request.page_token)
        before_id = int(last) if last else None
        if before_id is not None and not 0 < before_id <= MAX_ID:
            raise ValueError(last)  # never an id: Postgres could not even compare with it
    except (InvalidArgument, ValueError):
        problems.append(("page_token", "not a token from a previous response"))
    if problems:
        raise InvalidArgument(problems)
    return AuditQuery(
        start=start,
        end=end,
        actor=request.actor,
        rpc=request.rpc,
        target=request.target,
        page_size=size,
        before_id=before_id,
    )


def _time(
    value: timestamp_pb2.Timestamp, name: str, problems: list[tuple[str, str]]
) -> datetime | None:
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        problems.append((name, "not a valid timestamp"))
        return None


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """``ListAuditEvents`` over one service's :class:`AuditLog`."""

    def __init__(self, audit_log: AuditLog) -> None:
        self._log = audit_log

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        events, token = await self._log.list_page(query_of(request))
        return audit_pb2.ListAuditEventsResponse(events=events, next_page_token=token)


def audit_registration(audit_log: AuditLog) -> Registration:
    """What a server adds to its registrations to serve ``AuditService``."""
    return Registration(
        add=audit_pb2_grpc.add_AuditServiceServicer_to_server,
        servicer=AuditServicer(audit_log),
        full_name=SERVICE_NAME,
    )
