"""The Anthropic Messages API (``POST /v1/messages``), so Anthropic SDK users can point at
Switchboard: the request is :mod:`.anthropic_request`'s translation, the answer
:mod:`.anthropic_reply`'s, and both run through the router's own completions.

The key comes as ``x-api-key`` (Anthropic SDKs) or ``Authorization: Bearer``. Every answer
carries the request id as ``request-id`` (Anthropic's header) and ``X-Request-Id``. A stream's
status and headers are sent only once the relay's first event arrived, so whatever fails before
(the key, the request, limits, budgets, every upstream refusing) is an HTTP error with
Anthropic's error JSON and the status :mod:`.status` gives; a failure after that is an ``error``
event. A client that goes away cancels the handler: the generation is cut and metered.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any

import orjson
from aiohttp import web

from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument, SwitchboardError
from switchboard_core.logs import request_id_var
from switchboard_router.auth import Caller
from switchboard_router.completions import Prepared
from switchboard_router.edge.anthropic_reply import (
    StreamReply,
    WholeReply,
    error_json,
    sse_bytes,
)
from switchboard_router.edge.anthropic_request import Translated, translate
from switchboard_router.edge.door import REQUEST_ID_HEADER, Door, checked, json_object
from switchboard_router.edge.keepalive import Opening
from switchboard_router.edge.status import http_status, retry_after
from switchboard_router.lifecycle import DEPRECATED_HEADER

log = logging.getLogger(__name__)

PATH = "/v1/messages"
# What Anthropic sends to keep a stream alive (its SDKs skip it), here while the first event is
# awaited (edge/keepalive.py).
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MAX_SHOWN_PROBLEMS = 5


def routes(door: Door) -> list[web.RouteDef]:
    async def messages(request: web.Request) -> web.StreamResponse:
        return await _messages(door, request)

    return [web.post(PATH, messages)]


def _id_headers() -> dict[str, str]:
    request_id = request_id_var.get()
    return {"request-id": request_id, REQUEST_ID_HEADER: request_id}


def _message(error: SwitchboardError) -> str:
    if not isinstance(error, InvalidArgument):
        return error.message
    shown = [f"{f}: {why}" if f else why for f, why in error.violations[:MAX_SHOWN_PROBLEMS]]
    more = len(error.violations) + error.omitted - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={**_id_headers(), **headers},
    )


def error_response(error: SwitchboardError) -> web.Response:
    status = http_status(error)
    body = error_json(status, _message(error), request_id_var.get())
    return _json(status, body, retry_after(error))


def _http_error(error: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (the body over the size limit: 413) in Anthropic's JSON."""
    message = error.reason or "the request was refused"
    return _json(error.status, error_json(error.status, message, request_id_var.get()), {})


async def _messages(door: Door, request: web.Request) -> web.StreamResponse:
    try:  # a stream answers its own failures once its status is sent
        caller = await door.caller(request)
        translated = translate(await json_object(request))
        prepared = await _prepare(door, translated, caller)
        if translated.stream:
            return await _stream(door, request, prepared)
        return await _whole(door, prepared)
    except SwitchboardError as error:
        return error_response(error)
    except web.HTTPException as error:
        return _http_error(error)
    except Exception:  # a bug: a generic answer, the traceback in the log
        log.exception("the Anthropic messages route failed")
        return _json(500, error_json(500, "internal error", request_id_var.get()), {})


async def _prepare(door: Door, translated: Translated, caller: Caller) -> Prepared:
    """Checked as on the gRPC port; field paths named as the JSON names them."""
    message: router_pb2.StreamCompletionRequest | router_pb2.CreateCompletionRequest
    message = translated.request
    if not translated.stream:
        message = router_pb2.CreateCompletionRequest.FromString(
            translated.request.SerializeToString()  # the same fields, the same numbers
        )
    try:
        checked(message)
        return await door.completions.prepare(message, caller, None)
    except InvalidArgument as error:
        raise translated.origins.renamed(error) from None


async def _whole(door: Door, prepared: Prepared) -> web.Response:
    headers: dict[str, str] = {}
    reply = WholeReply()
    events = door.completions.events(
        prepared, streamed=False, on_deprecated=lambda n: headers.update({DEPRECATED_HEADER: n})
    )
    async with aclosing(events):  # closed at once: a cut generation is metered now
        async for event in events:
            reply.add(event)
    return _json(200, reply.result(), headers)


async def _stream(door: Door, request: web.Request, prepared: Prepared) -> web.StreamResponse:
    headers: dict[str, str] = {}
    events = door.completions.events(
        prepared, streamed=True, on_deprecated=lambda n: headers.update({DEPRECATED_HEADER: n})
    )

    def stream_response() -> web.StreamResponse:  # headers as they stand when it begins
        return web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **_id_headers(),
                **headers,
            },
        )

    # A failure before the answer began (no event, no ping yet) is an HTTP status; after,
    # an error event in the stream.
    opening = Opening(request, stream_response, PING, door.keepalive_seconds)
    try:
        async with aclosing(events):  # closed at once: a cut generation is metered now
            first = await anext(events)
            response = await opening.open()
            reply = StreamReply()
            await response.write(sse_bytes(reply.events(first)))
            async for event in events:
                chunk = reply.events(event)
                if chunk:
                    await response.write(sse_bytes(chunk))
    except SwitchboardError as error:
        await opening.stop()
        if opening.response is None:
            raise
        body = error_json(http_status(error), _message(error), request_id_var.get())
        await opening.response.write(sse_bytes([("error", body)]))
    except ConnectionResetError:  # the client left: the generation is cut and metered
        return opening.response or web.StreamResponse()
    except Exception:  # a bug: said in the stream, the traceback in the log
        await opening.stop()
        if opening.response is None:
            raise
        log.exception("the Anthropic messages stream failed")
        await opening.response.write(
            sse_bytes([("error", error_json(500, "internal error", request_id_var.get()))])
        )
    finally:
        await opening.stop()
    assert opening.response is not None  # opened above, or the failure was raised
    await opening.response.write_eof()
    return opening.response
