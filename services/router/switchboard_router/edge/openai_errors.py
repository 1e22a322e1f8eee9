"""Errors in OpenAI's JSON: ``{"error": {"message", "type", "param", "code"}}``, with the HTTP
status :mod:`.status` gives the domain error.

``type`` is OpenAI's family for the status (``invalid_request_error``,
``authentication_error``, ...); ``code`` is the error's reason in lower case
(``model_not_found``, ``api_key_invalid``, ``rate_limited``), so it matches OpenAI's own codes
where they exist; ``param`` names the first bad field of a 400 by its JSON path, and
``metadata`` (OpenRouter's place for more) holds the reason as the gRPC API gives it and every
bad field.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from switchboard_core.errors import InvalidArgument, SwitchboardError
from switchboard_core.logs import request_id_var
from switchboard_router.edge.door import REQUEST_ID_HEADER
from switchboard_router.edge.status import http_status, retry_after

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}


def error_body(error: SwitchboardError, status: int) -> dict[str, Any]:
    param = None
    metadata: dict[str, Any] = {"reason": error.reason}
    if isinstance(error, InvalidArgument):
        named = [field for field, _ in error.violations if field]
        param = named[0] if named else None
        metadata["violations"] = [{"param": f or None, "message": w} for f, w in error.violations]
    return {
        "error": {
            "message": error.message,
            "type": TYPES.get(status, "api_error"),
            "param": param,
            "code": error.reason.lower(),
            "metadata": metadata,
        }
    }


def error_response(error: SwitchboardError) -> web.Response:
    status = http_status(error)
    headers = {REQUEST_ID_HEADER: request_id_var.get() or "", **retry_after(error)}
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(error, status)),
        content_type="application/json",
        headers=headers,
    )


def plain_error(status: int, message: str, code: str) -> web.Response:
    """An error aiohttp itself raised (a body over the size limit: 413), in the same JSON."""
    body = {
        "error": {
            "message": message,
            "type": TYPES.get(status, "api_error"),
            "param": None,
            "code": code,
        }
    }
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id_var.get() or ""},
    )
