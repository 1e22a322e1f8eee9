"""Domain errors (:class:`~switchboard_core.errors.SwitchboardError`, a gRPC code and a reason)
as HTTP statuses, the way OpenAI-compatible APIs and OpenRouter answer them."""

from __future__ import annotations

import math

import grpc

from switchboard_core.errors import SwitchboardError

# OpenRouter: 400 bad request, 401 bad key, 402 out of credit, 403 moderation/permission,
# 408 timeout, 429 rate limited, 502 the provider failed, 503 no provider available.
_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.DEADLINE_EXCEEDED: 408,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}
# Reasons whose HTTP status is more specific than their code's.
_BY_REASON: dict[str, int] = {
    "INSUFFICIENT_CREDIT": 402,
    "KEY_LIMIT_EXCEEDED": 402,
    "MODEL_NOT_FOUND": 404,
    "UPSTREAM_CREDENTIAL_REJECTED": 502,
    "UPSTREAM_PROTOCOL_ERROR": 502,
    "UPSTREAM_REJECTED_REQUEST": 502,
    "UPSTREAM_STALLED": 502,
    "UPSTREAM_TIMEOUT": 504,
    "UPSTREAM_UNAVAILABLE": 502,
}


def http_status(error: SwitchboardError) -> int:
    return _BY_REASON.get(error.reason) or _BY_CODE.get(error.code, 500)


def retry_after(error: SwitchboardError) -> dict[str, str]:
    """A ``Retry-After`` header (whole seconds, rounded up) when a retry can help."""
    if error.retry_after_seconds is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(error.retry_after_seconds)))}
