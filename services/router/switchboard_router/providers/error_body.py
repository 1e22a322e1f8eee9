"""Reading a provider's JSON error body: the one bounded parse every adapter shares.

Each provider wraps its error in an ``error`` member: OpenAI and the compatible hosts
``{"error": {"message", "type", "code"}}`` (some hosts put a bare string there), Anthropic
``{"type": "error", "error": {"type", "message"}}``, Google ``{"error": {"code", "message",
"status", "details"}}`` or, for ``streamGenerateContent`` without ``alt=sse``, an array of one
such body. This module only reads; what the error *means* (which class, whether the prompt was
too long, whose credential was refused) stays in each provider's own module, beside its wire
format.

Bounds: a body over :data:`MAX_ERROR_BODY_BYTES` is not parsed (no provider's error comes
near it; :mod:`.http` reads no more than that of a failed answer), and the message kept is cut
at :data:`MAX_MESSAGE_CHARS`. Nothing here logs: a provider's message can quote the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 500
NO_MESSAGE = "(no error message)"


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """What a provider's error body said. Every field is empty when the body did not say it
    (not JSON, too large, no ``error`` member)."""

    # The provider's message, at most MAX_MESSAGE_CHARS; NO_MESSAGE when it gave none.
    message: str = NO_MESSAGE
    # ``error.type`` (OpenAI's and Anthropic's error kinds).
    type: str = ""
    # ``error.code`` as text (OpenAI's ``context_length_exceeded``, Google's HTTP code).
    code: str = ""
    # The whole error object, for what only one provider reads (Google's ``details``).
    error: dict[str, Any] = field(default_factory=dict)


def read_error_body(payload: bytes) -> ErrorBody:
    """The error in ``payload``; an empty :class:`ErrorBody` when there is none to read."""
    body: Any = None
    if len(payload) <= MAX_ERROR_BODY_BYTES:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = None
    if isinstance(body, list) and body:  # Google's array of one error body
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and error:  # hosts that send the message alone
        return ErrorBody(message=error[:MAX_MESSAGE_CHARS])
    if not isinstance(error, dict):
        return ErrorBody()
    return ErrorBody(
        message=str(error.get("message") or NO_MESSAGE)[:MAX_MESSAGE_CHARS],
        type=str(error.get("type") or ""),
        code=str(error.get("code") or ""),
        error=error,
    )
