"""The adapter interface and the errors adapters raise.

An adapter turns one :class:`CompletionRequest` into an HTTP call to one endpoint and yields
canonical events: text deltas, then usage and a finish event (in either order). It raises
:class:`UpstreamError` subclasses (all :class:`SwitchboardError`) for provider trouble, so the
relay can fall back before the first token and the client gets the right gRPC code after it.

The SSE adapters share one ``stream()`` (:func:`.streaming.stream_sse`) and one error-body
reader (:mod:`.error_body`); each supplies only its request, its stream reader and its error
table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from switchboard_core.config import Secret
from switchboard_core.errors import SwitchboardError
from switchboard_router.canonical import AdapterEvent, CompletionRequest


@dataclass(frozen=True, slots=True)
class StallLimits:
    """How long an upstream stream may be silent before it is called stalled, in seconds:
    until the first byte of the response body (``first_byte``), and between two reads after
    it (``idle``). The defaults are the router's (``SWITCHBOARD_UPSTREAM_FIRST_BYTE_SECONDS``,
    ``SWITCHBOARD_UPSTREAM_IDLE_SECONDS``); the catalog may set either per model or endpoint
    (:func:`switchboard_router.catalog_cache.stall_limits` resolves them)."""

    first_byte: float = 15.0
    idle: float = 30.0


DEFAULT_STALL = StallLimits()


@dataclass(frozen=True, slots=True)
class Target:
    """Where and as what an adapter sends one request."""

    provider_id: str
    base_url: str
    upstream_model: str
    api_key: Secret
    # Which variant of the wire format the host speaks (OpenAI-compatible hosts differ in
    # details): the provider's catalog dialect, else its id. Unknown dialects get the default.
    dialect: str = ""
    # The endpoint's output cap from the catalog, 0 when unknown (for providers that require
    # max_tokens, such as Anthropic).
    max_completion_tokens: int = 0
    # How long the stream may be silent (the endpoint's limits, resolved).
    stall: StallLimits = DEFAULT_STALL


class Adapter(Protocol):
    # Optional request parameters (canonical names) the adapter can translate for ``dialect``;
    # the relay unsets the others before calling, and reports them as ignored.
    def parameters(self, dialect: str) -> frozenset[str]: ...

    # Whether the provider refuses requests without a credential: the relay does not send
    # one to a provider the router has no key for.
    def requires_credential(self, dialect: str) -> bool: ...

    def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        """Yield the completion's events; raise :class:`UpstreamError` on provider trouble."""
        ...


class UpstreamError(SwitchboardError):
    """The provider failed. ``status`` is its HTTP status, 0 when none came."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        provider_id: str,
        status: int = 0,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(
            message,
            metadata={"provider": provider_id, "http_status": str(status)},
            retry_after_seconds=retry_after_seconds,
        )
        self.provider_id = provider_id
        self.status = status


class UpstreamUnavailable(UpstreamError):
    """5xx, connection errors, overload: another endpoint may well succeed."""


class UpstreamStalled(UpstreamUnavailable):
    """The provider sent nothing for longer than a stall limit. ``phase`` says which:
    ``first_byte`` (nothing of the body yet: the relay moves on to the next endpoint) or
    ``idle`` (silent after it began)."""

    reason = "UPSTREAM_STALLED"

    def __init__(self, provider_id: str, phase: str, limit: float) -> None:
        if phase == "first_byte":
            what = f"nothing of its answer came within {limit:g} s"
        else:
            what = f"its stream went silent for {limit:g} s"
        super().__init__(
            f"{provider_id} stalled: {what} (the {phase} stall limit)", provider_id=provider_id
        )
        self.metadata["stall_phase"] = phase
        self.phase = phase
        self.limit = limit


class UpstreamRateLimited(UpstreamError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "UPSTREAM_RATE_LIMITED"


class UpstreamTimeout(UpstreamError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "UPSTREAM_TIMEOUT"


class UpstreamBadRequest(UpstreamError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "UPSTREAM_REJECTED_REQUEST"


class UpstreamContextLengthExceeded(UpstreamBadRequest):
    reason = "CONTEXT_LENGTH_EXCEEDED"


class UpstreamCredentialRejected(UpstreamError):
    """The provider refused Switchboard's credential (not the client's key)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_CREDENTIAL_REJECTED"


class UpstreamNotFound(UpstreamError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "UPSTREAM_MODEL_NOT_FOUND"


class UpstreamProtocolError(UpstreamError):
    """The provider sent something that is not its documented wire format."""

    reason = "UPSTREAM_PROTOCOL_ERROR"


def error_for_status(
    status: int,
    message: str,
    *,
    provider_id: str,
    retry_after: float | None = None,
    context_length: bool = False,
) -> UpstreamError:
    """The shared HTTP status table. Adapters say when the body means the prompt was too long;
    the message names the provider and says the refusal came from upstream, not from the
    gateway (the upstream status is in the details too: ``http_status``)."""
    cls: type[UpstreamError]
    if context_length:
        cls = UpstreamContextLengthExceeded
    elif status in (400, 413, 422):
        cls = UpstreamBadRequest
    elif status in (401, 403):
        cls = UpstreamCredentialRejected
    elif status == 404:
        cls = UpstreamNotFound
    elif status == 408:
        cls = UpstreamTimeout
    elif status == 429:
        cls = UpstreamRateLimited
    else:
        cls = UpstreamUnavailable
    text = f"upstream provider {provider_id} answered HTTP {status}: {message}"
    return cls(text, provider_id=provider_id, status=status, retry_after_seconds=retry_after)


def ended_early(provider: str) -> UpstreamUnavailable:
    """The provider's stream ended (the connection closed) before it said the answer was
    complete."""
    return UpstreamUnavailable(
        f"{provider} stream ended before the completion finished", provider_id=provider
    )


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
