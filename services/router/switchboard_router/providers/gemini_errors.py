"""Gemini's error bodies, as HTTP answers or inside a 200 stream, turned into our errors.

Google answers ``{"error": {"code", "message", "status", "details"}}`` (an array of one such
object for ``streamGenerateContent`` without ``alt=sse``). The HTTP status alone blames the
wrong party in places, so the ``details`` decide first:

- a bad key is a 400 ``INVALID_ARGUMENT`` whose ``google.rpc.ErrorInfo`` says
  ``API_KEY_INVALID`` (also for an expired key: "API key expired. Please renew the API key."):
  that is the router's credential, not the client's request (continuedev/continue#10290,
  #11336). The other key and project refusals in :data:`CREDENTIAL_REASONS` likewise;
- ``RetryInfo.retryDelay`` ("26s") is the retry-after when no header gave one;
- 499 ``CANCELLED`` ("The operation was cancelled.", google-gemini/gemini-cli#20309) is the
  backend dropping the request under load, not the client leaving: unavailable, try elsewhere.

The provider's own message is always kept: it is what tells an operator what went wrong.
"""

from __future__ import annotations

from typing import Any

from switchboard_router.providers.base import (
    UpstreamCredentialRejected,
    UpstreamError,
    error_for_status,
    parse_retry_after,
)
from switchboard_router.providers.error_body import (
    MAX_MESSAGE_CHARS,
    NO_MESSAGE,
    read_error_body,
)

# google.rpc.ErrorInfo reasons that refuse the key or the project behind it
# (https://cloud.google.com/apis/design/errors#error_info, API keys documentation).
CREDENTIAL_REASONS = frozenset(
    {
        "API_KEY_INVALID",
        "API_KEY_EXPIRED",
        "API_KEY_SERVICE_BLOCKED",
        "API_KEY_HTTP_REFERRER_BLOCKED",
        "API_KEY_IP_ADDRESS_BLOCKED",
        "API_KEY_ANDROID_APP_BLOCKED",
        "API_KEY_IOS_APP_BLOCKED",
        "ACCESS_TOKEN_EXPIRED",
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        "ACCESS_TOKEN_TYPE_UNSUPPORTED",
        "CREDENTIALS_MISSING",
        "SERVICE_DISABLED",
        "CONSUMER_SUSPENDED",
        "CONSUMER_INVALID",
        "BILLING_DISABLED",
        "USER_PROJECT_DENIED",
    }
)
CREDENTIAL_STATUSES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [
        d
        for d in error.get("details") or ()
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)
    ]


def error_from_payload(
    error: dict[str, Any], status: int, provider: str, retry_after: float | None = None
) -> UpstreamError:
    """The error for one Google error object (the value of ``"error"``)."""
    message = str(error.get("message") or NO_MESSAGE)[:MAX_MESSAGE_CHARS]
    code = error.get("code")
    if isinstance(code, int) and code:
        status = code
    if retry_after is None:
        for info in _details(error, "RetryInfo"):
            retry_after = parse_retry_after(str(info.get("retryDelay", "")).removesuffix("s"))
    reasons = {str(d.get("reason", "")) for d in _details(error, "ErrorInfo")}
    if reasons & CREDENTIAL_REASONS or str(error.get("status", "")) in CREDENTIAL_STATUSES:
        return UpstreamCredentialRejected(
            f"{provider} refused the router's credential (HTTP {status}): {message}",
            provider_id=provider,
            status=status,
            retry_after_seconds=retry_after,
        )
    return error_for_status(
        status,
        message,
        provider_id=provider,
        retry_after=retry_after,
        context_length=status == 400 and "input token count" in message and "exceeds" in message,
    )


def error_from_body(
    status: int, payload: bytes, provider_id: str, retry_after: float | None
) -> UpstreamError:
    """The error for a non-200 answer's body (``open_sse``'s ``error_from_body``)."""
    return error_from_payload(read_error_body(payload).error, status, provider_id, retry_after)
