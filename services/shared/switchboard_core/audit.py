"""Auditing admin changes: what a successful admin write records, and how it is written.

**What.** Every RPC whose owner has an :class:`~switchboard_core.rpc_owners.Audit` (all the
admin writes: keys, limits, credits, operator keys, the catalog) records one
:class:`AuditEvent` after the handler returns: the caller (:func:`switchboard_core.auth.actor`,
e.g. ``"operator:opk_..."``), the full method, the target (``"<kind>:<id>"``, from the
request or, for what a call creates, the response), the request id, and the change:
``{"request": ..., "result": ...}``. ``request`` is the request as proto JSON (field names as in
the .proto, every field shown, amounts included) without the spec's ``redact`` fields;
``result`` holds only the response fields the spec names (a new key's id, name, prefix).
A response is never recorded whole, so a secret it carries (``CreateApiKeyResponse.secret``)
never reaches the log; ``tests/unit/test_rpc_owner_table.py`` checks that no spec names a
secret and that every secret in an audited request is redacted. A refused or invalid call
records nothing: the caller was refused before the handler ran, or the handler refused with
a code of :data:`CHANGED_NOTHING` (handlers validate before they write, and a write that
conflicts is rolled back). A call that failed otherwise (``INTERNAL``, ``UNAVAILABLE``...)
after its handler began may have changed something anyway (a credit grant is committed
before Redis is told), so it records an event whose change has ``"failed": "<code>"``
(the target is ``"<kind>:unknown"`` when only the response would have named it). The
change is bounded: strings are cut at :data:`MAX_STRING_CHARS` (a
model's 4,000-character description is kept whole), lists and maps at :data:`MAX_ITEMS`,
and a change still over :data:`MAX_CHANGE_BYTES` of JSON is replaced by a note of its size.

**Where.** The interceptor (:mod:`switchboard_core.interceptors`) hands the call to an
:class:`Auditor`, which writes to the server's :class:`AuditSink`: in the services, the
append-only ``audit_events`` table of their own database (:mod:`switchboard_core.audit_log`).

**When writing fails.** The change is already made (committed, announced to routers), so the
call still succeeds: failing it would invite a retry that repeats a non-idempotent change
(a credit grant without ``request_id``). The event is logged at ERROR instead, with its ids,
target and change (which hold no secrets), and counted in
``switchboard_audit_write_failures_total``; the log line is then the record. Writing the event
in the handler's own transaction would close that gap, but every store would have to take
part (and some changes are not one transaction: a grant also updates Redis and announces
itself), so the one interceptor records every write and none can be forgotten. The write is
shielded from the call's cancellation (a client that hangs up after the change was made does
not lose its event), and :meth:`Auditor.flush` waits for such writes before the server closes
its database pool. What loses an event: a process killed between the change and its
event, and a call cancelled while its handler was still running (the change may or may
not have been committed; nothing is recorded).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import Counter

from switchboard_core.auth import actor
from switchboard_core.errors import SwitchboardError
from switchboard_core.logs import request_id_var
from switchboard_core.rpc_owners import Audit

log = logging.getLogger(__name__)

# Bounds of a recorded change: the longest string kept whole, the most items kept of a list or
# map, and the most JSON bytes stored (over it, only a note of the size is).
MAX_STRING_CHARS = 8192
MAX_ITEMS = 100
MAX_CHANGE_BYTES = 65536
# The most characters of a change an ERROR line (a failed write) carries.
LOGGED_CHANGE_CHARS = 4096

# The codes by which a handler refuses before it changes anything: such a failure records no
# event. Any other failure of an audited call records one (its change may have been made).
CHANGED_NOTHING = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

AUDIT_WRITE_FAILURES = Counter(
    "switchboard_audit_write_failures_total",
    "Admin changes that succeeded but whose audit event could not be written; the event is"
    " in an ERROR log line instead.",
    ["grpc_service", "grpc_method"],
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One admin change, as the sink stores it (the sink adds its service and the time)."""

    actor: str
    rpc: str
    target: str
    change: Mapping[str, Any]
    request_id: str = ""

    def change_json(self) -> str:
        return json.dumps(self.change, separators=(",", ":"), ensure_ascii=False)


class AuditSink(Protocol):
    async def record(self, event: AuditEvent) -> None:
        """Store ``event``; raises when it could not."""
        ...


def event_for(
    method: str, spec: Audit, request: Message, response: Message, *, caller: str | None = None
) -> AuditEvent:
    """The event of a successful call of ``method`` (``"/pkg.Service/Method"``), by the
    current caller (or ``caller``, for a change made without an RPC)."""
    roots = {"request": request, "response": response}
    root, _, path = spec.target.partition(".")
    target = _field(roots[root], path)
    change: dict[str, Any] = {"request": _request_json(spec, request)}
    if spec.result:
        result: dict[str, Any] = {}
        for path in spec.result:
            _put(result, path.split("."), _json_value(_field(response, path)))
        change["result"] = result
    return AuditEvent(
        actor=caller if caller is not None else actor(),
        rpc=method,
        target=f"{spec.kind}:{target}",
        change=bounded_change(change),
        request_id=request_id_var.get(),
    )


def failure_event_for(method: str, spec: Audit, request: Message, code: str) -> AuditEvent:
    """The event of a call that failed with ``code`` after its handler began."""
    root, _, path = spec.target.partition(".")
    target = _field(request, path) if root == "request" else "unknown"
    change = {"request": _request_json(spec, request), "failed": code}
    return AuditEvent(
        actor=actor(),
        rpc=method,
        target=f"{spec.kind}:{target}",
        change=bounded_change(change),
        request_id=request_id_var.get(),
    )


def _request_json(spec: Audit, request: Message) -> dict[str, Any]:
    """The request as proto JSON (every field shown), without the redacted fields."""
    data = json_format.MessageToDict(
        request, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for redacted in spec.redact:
        _drop(data, redacted.split("."))
    return data


def bounded_change(change: dict[str, Any]) -> dict[str, Any]:
    """``change`` with long strings, lists and maps cut; when even that is over
    :data:`MAX_CHANGE_BYTES`, the request is replaced by a note of its size and fields (the
    small ``result`` or ``failed`` stay)."""
    cut: dict[str, Any] = _bounded(change)
    size = len(json.dumps(cut, separators=(",", ":"), ensure_ascii=False).encode())
    if size <= MAX_CHANGE_BYTES:
        return cut
    note = {"truncated": True, "size_bytes": size, "request_fields": sorted(change["request"])}
    return note | {key: cut[key] for key in ("result", "failed") if key in cut}


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        return value[:MAX_STRING_CHARS] + f"...[{len(value) - MAX_STRING_CHARS} more characters]"
    if isinstance(value, list):
        items = [_bounded(item) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"...[{len(value) - MAX_ITEMS} more items]")
        return items
    if isinstance(value, dict):
        kept = {key: _bounded(item) for key, item in list(value.items())[:MAX_ITEMS]}
        if len(value) > MAX_ITEMS:
            kept["..."] = f"{len(value) - MAX_ITEMS} more entries"
        return kept
    return value


def _field(message: Message, path: str) -> Any:
    value: Any = message
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, str | bytes | bool | int | float):
        return value
    return [_json_value(item) for item in value]  # a repeated field


def _put(into: dict[str, Any], names: list[str], value: Any) -> None:
    for name in names[:-1]:
        into = into.setdefault(name, {})
    into[names[-1]] = value


def _drop(data: dict[str, Any], names: list[str]) -> None:
    for name in names[:-1]:
        inner = data.get(name)
        if not isinstance(inner, dict):
            return
        data = inner
    data.pop(names[-1], None)


class Auditor:
    """Records the admin changes of one server into ``sink`` (see the module docstring)."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink
        self._writing: set[asyncio.Task[None]] = set()

    async def record_call(
        self, method: str, spec: Audit, request: Message, response: Message
    ) -> None:
        """Record a successful call. Never raises: a failure is logged and counted."""
        try:
            event = event_for(method, spec, request, response)
        except Exception:  # a spec that does not fit its messages (the table test stops it)
            _failed(method)
            log.exception(
                "audit event not built; the change was (or may have been) made",
                extra={"rpc": method},
            )
            return
        await self._shielded(event)

    async def record_failure(
        self, method: str, spec: Audit, request: Message, error: Exception
    ) -> None:
        """Record a call that failed after its handler began, unless the failure's code says
        that nothing changed (:data:`CHANGED_NOTHING`). Never raises."""
        code = error.code if isinstance(error, SwitchboardError) else grpc.StatusCode.INTERNAL
        if code in CHANGED_NOTHING:
            return
        try:
            event = failure_event_for(method, spec, request, code.name)
        except Exception:
            _failed(method)
            log.exception(
                "audit event not built; the change was (or may have been) made",
                extra={"rpc": method},
            )
            return
        await self._shielded(event)

    async def _shielded(self, event: AuditEvent) -> None:
        task = asyncio.create_task(self._write(event))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
        await asyncio.shield(task)  # a cancelled call does not cancel the write

    async def _write(self, event: AuditEvent) -> None:
        try:
            await self._sink.record(event)
        except Exception as error:
            _failed(event.rpc)
            log.error(
                "audit event not written; the change was (or may have been) made",
                extra={
                    "rpc": event.rpc,
                    "actor": event.actor,
                    "target": event.target,
                    "change": event.change_json()[:LOGGED_CHANGE_CHARS],
                    "error": f"{type(error).__name__}: {error}"[:500],
                },
            )

    async def flush(self) -> None:
        """Wait for the writes of calls that were cancelled while writing."""
        while self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)


def _failed(method: str) -> None:
    service, _, name = method[1:].rpartition("/")
    AUDIT_WRITE_FAILURES.labels(service, name).inc()
