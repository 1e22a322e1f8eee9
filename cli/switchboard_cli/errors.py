"""Turning failures into one clear line for the terminal."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard_cli.connection import Target

_M = TypeVar("_M", bound=Message)

UNAVAILABLE_HINTS = {
    "router": "start it with `make run`, or pass --router / set SWITCHBOARD_ROUTER_ADDR",
    "catalog": "start it with `make run`, or pass --catalog",
    "metering": "start it with `make run`, or pass --metering",
}


class CliError(Exception):
    """A failure the user can fix; printed as one line without a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def describe_rpc_error(error: grpc.aio.AioRpcError, target: Target) -> str:
    """One line: the status code, the message and whatever the rich status adds."""
    code = error.code()
    message = " ".join((error.details() or "").split())
    details = _status_details(error)
    if not details and code is grpc.StatusCode.UNAVAILABLE:
        hint = UNAVAILABLE_HINTS.get(target.service, "")
        return f"cannot reach the {target.service} at {target.address} ({message}); {hint}"
    if not details and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {target.service} at {target.address} did not answer in time"
    line = f"{code.name}: {message or 'no message'}"
    extras = [text for text in _explain(details, code) if text not in line]
    if extras:
        line += " [" + "; ".join(extras) + "]"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        if target.service == "router":
            line += " (check --api-key or SWITCHBOARD_API_KEY)"
        else:
            line += " (check --admin-key or SWITCHBOARD_ADMIN_KEY)"
    return line


def _status_details(error: grpc.aio.AioRpcError) -> list[any_pb2.Any]:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # trailing status disagrees with the call's own code or message
        return []
    return [] if status is None else list(status.details)


def _explain(details: list[any_pb2.Any], code: grpc.StatusCode) -> list[str]:
    out: list[str] = []
    for detail in details:
        if (bad := _unpack(detail, error_details_pb2.BadRequest)) is not None:
            out += [f"{v.field}: {v.description}" for v in bad.field_violations]
        elif (pre := _unpack(detail, error_details_pb2.PreconditionFailure)) is not None:
            out += [f"{v.subject or v.type}: {v.description}" for v in pre.violations]
        elif (quota := _unpack(detail, error_details_pb2.QuotaFailure)) is not None:
            out += [f"{v.subject}: {v.description}" for v in quota.violations]
        elif (retry := _unpack(detail, error_details_pb2.RetryInfo)) is not None:
            out.append(f"retry in {retry.retry_delay.ToTimedelta().total_seconds():g}s")
        elif (info := _unpack(detail, error_details_pb2.ErrorInfo)) is not None:
            out += [f"reason {info.reason}"] if info.reason not in ("", code.name) else []
    return out


def _unpack(detail: any_pb2.Any, message_type: type[_M]) -> _M | None:
    message = message_type()
    return message if detail.Unpack(message) else None  # False when the type differs
