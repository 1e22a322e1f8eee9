"""The domain errors. Each fixes a gRPC code and an ``ErrorInfo`` reason.

Handlers raise these; :mod:`switchboard_core.interceptors` turns them into a
``google.rpc.Status`` with exactly one ``ErrorInfo`` plus the details that help
(``BadRequest`` field violations, ``RetryInfo``). Anything else becomes ``INTERNAL``
with a generic message and a logged traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "switchboard.dev"
# Error details travel in trailing metadata, which gRPC clients cap (8 KiB by default): a
# bigger status reaches the client as RESOURCE_EXHAUSTED instead of the real error. These
# bounds keep every status well under it, however much a caller got wrong.
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_VALUE_CHARS = 256
MAX_FIELD_VIOLATIONS = 20
MAX_FIELD_CHARS = 160
MAX_DESCRIPTION_CHARS = 240


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SwitchboardError(Exception):
    """Base of every error a client is meant to see."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = {k: clip(v, MAX_METADATA_VALUE_CHARS) for k, v in (metadata or {}).items()}
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata=self.metadata
        )
        out = [_pack(info)]
        if self.retry_after_seconds is not None:
            seconds = max(0.0, self.retry_after_seconds)
            delay = duration_pb2.Duration(
                seconds=int(seconds), nanos=int((seconds - int(seconds)) * 1e9)
            )
            out.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return out

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(
            code=_CODE_NUMBERS[self.code], message=self.message, details=self.details()
        )
        return rpc_status.to_status(status)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


class InvalidArgument(SwitchboardError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Mapping[str, str] | list[tuple[str, str]]) -> None:
        items = list(violations.items()) if isinstance(violations, Mapping) else list(violations)
        # The first MAX_FIELD_VIOLATIONS, each clipped; the rest are counted.
        self.violations = [
            (clip(f, MAX_FIELD_CHARS), clip(d, MAX_DESCRIPTION_CHARS))
            for f, d in items[:MAX_FIELD_VIOLATIONS]
        ]
        self.omitted = len(items) - len(self.violations)
        text = "; ".join(f"{field_}: {why}" for field_, why in self.violations[:5])
        more = len(items) - min(5, len(self.violations))
        if more > 0:
            text += f" (and {more} more {'problem' if more == 1 else 'problems'})"
        super().__init__(f"invalid request: {text}", metadata={"violations": str(len(items))})

    def details(self) -> list[any_pb2.Any]:
        shown = list(self.violations)
        if self.omitted:
            shown.append(("", f"{self.omitted} more problems not listed"))
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in shown
            ]
        )
        return [*super().details(), _pack(bad)]


class Unauthenticated(SwitchboardError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "API_KEY_INVALID"


class PermissionDenied(SwitchboardError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class NotFound(SwitchboardError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(SwitchboardError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(SwitchboardError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(SwitchboardError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(SwitchboardError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(SwitchboardError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Internal(SwitchboardError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: code_pb2.OK,
    grpc.StatusCode.CANCELLED: code_pb2.CANCELLED,
    grpc.StatusCode.UNKNOWN: code_pb2.UNKNOWN,
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE: code_pb2.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED: code_pb2.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: code_pb2.DATA_LOSS,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
}


def _error_details(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], float | None]:
    """The ErrorInfo reason and metadata and the RetryInfo delay of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, metadata, retry = "", {}, None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = str(info.reason), dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry = retry_info.retry_delay.ToTimedelta().total_seconds()
    return reason, metadata, retry


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call to a Switchboard service ("" when none)."""
    try:
        return _error_details(error)[0]
    except ValueError:  # the trailing status disagrees with the call's own code or message
        return ""


# The domain error a failed call's code is rebuilt as (from_rpc_error). INVALID_ARGUMENT is
# not among them: its field violations are the callee's, not this service's caller's.
_REBUILT: dict[grpc.StatusCode, type[SwitchboardError]] = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> SwitchboardError:
    """Rebuild a domain error from a failed call to another Switchboard service; a code
    without a domain error of its own becomes ``UNAVAILABLE`` (``UPSTREAM_SERVICE_ERROR``)."""
    reason, metadata, retry = _error_details(error)
    cls = _REBUILT.get(error.code())
    if cls is not None:
        return cls(
            error.details() or "",
            reason=reason or None,
            metadata=metadata,
            retry_after_seconds=retry,
        )
    return Unavailable(
        error.details() or "upstream service failed",
        reason=reason or "UPSTREAM_SERVICE_ERROR",
        metadata=metadata,
        retry_after_seconds=retry,
    )
