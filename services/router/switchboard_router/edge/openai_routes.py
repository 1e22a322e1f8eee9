"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` (streamed as server-sent
events, or whole) and ``GET /v1/models``.

A completion's headers are sent only once the relay's first event arrives, so a request
refused before its first token (a bad field, a key out of credit, every endpoint down) gets
its real HTTP status and OpenAI's error JSON. Once a stream has started, an error is one last
``data: {"error": ...}`` event and the stream ends without ``[DONE]`` (OpenRouter's way; the
OpenAI SDKs raise it). A client that goes away cancels the handler (the listener cancels
handlers), which cuts the generation; the relay meters what was generated.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing

import orjson
from aiohttp import web

from switchboard_core.errors import InvalidArgument, SwitchboardError
from switchboard_core.logs import request_id_var
from switchboard_router.completions import Prepared
from switchboard_router.edge.door import REQUEST_ID_HEADER, Door, checked, json_object
from switchboard_router.edge.keepalive import Opening
from switchboard_router.edge.openai_errors import error_body, error_response, plain_error
from switchboard_router.edge.openai_models import models_json, usable_models
from switchboard_router.edge.openai_request import ChatRequest, chat_request
from switchboard_router.edge.openai_response import completion_json
from switchboard_router.edge.openai_stream import ChunkStream
from switchboard_router.edge.status import http_status
from switchboard_router.lifecycle import DEPRECATED_HEADER
from switchboard_router.relay import RelayEvent
from switchboard_router.responses import WholeCompletion

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
DONE = b"data: [DONE]\n\n"
# An SSE comment while the first event is awaited (clients ignore it; OpenRouter sends one).
KEEPALIVE = b": keep-alive\n\n"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes(door: Door) -> list[web.RouteDef]:
    api = OpenAIRoutes(door)
    return [
        web.post(CHAT, _answered(CHAT, api.chat_completions)),
        web.get(MODELS, _answered(MODELS, api.models)),
    ]


def _answered(route: str, handler: Handler) -> Handler:
    """The handler with its errors in OpenAI's JSON."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except SwitchboardError as error:
            response = error_response(error)
        except web.HTTPException as error:  # aiohttp's own: the body size limit (413)
            response = plain_error(error.status, error.reason, error.reason.lower())
        except Exception:
            log.exception("unhandled error", extra={"route": route})
            response = plain_error(500, "internal error", "internal")
        return response

    return answer


def _headers(notices: list[str]) -> dict[str, str]:
    headers = {REQUEST_ID_HEADER: request_id_var.get()}
    if notices:
        headers[DEPRECATED_HEADER] = notices[-1]
    return headers


def _known(failure: Exception) -> SwitchboardError:
    """The error to tell a client whose stream has started (an unexpected one is logged)."""
    if isinstance(failure, SwitchboardError):
        return failure
    log.error("unhandled error in a stream", exc_info=failure, extra={"route": CHAT})
    return SwitchboardError("internal error")


class OpenAIRoutes:
    def __init__(self, door: Door) -> None:
        self._door = door

    async def models(self, request: web.Request) -> web.StreamResponse:
        await self._door.caller(request)
        listed = await usable_models(self._door.account)
        return web.Response(
            body=orjson.dumps(models_json(listed)),
            content_type="application/json",
            headers=_headers([]),
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        caller = await self._door.caller(request)
        chat = chat_request(await json_object(request))
        try:
            prepared = await self._door.completions.prepare(
                checked(chat.request), caller, remaining=None
            )
        except InvalidArgument as error:
            raise chat.in_json_terms(error) from None
        if chat.stream:
            return await self._stream(request, chat, prepared)
        return await self._whole(prepared)

    def _events(
        self, prepared: Prepared, streamed: bool, notices: list[str]
    ) -> AsyncGenerator[RelayEvent, None]:
        """Closed however the handler ends (``aclosing``): the relay's ``finally`` runs at
        once, so a cancelled client's generation is cut and metered now, not when garbage is
        collected."""
        return self._door.completions.events(
            prepared, streamed=streamed, on_deprecated=notices.append
        )

    async def _whole(self, prepared: Prepared) -> web.StreamResponse:
        notices: list[str] = []
        whole = WholeCompletion()
        async with aclosing(self._events(prepared, False, notices)) as events:
            async for event in events:
                whole.add(event)
        return web.Response(
            body=orjson.dumps(completion_json(whole.result())),
            content_type="application/json",
            headers=_headers(notices),
        )

    async def _stream(
        self, request: web.Request, chat: ChatRequest, prepared: Prepared
    ) -> web.StreamResponse:
        notices: list[str] = []
        render = ChunkStream(chat.include_usage)

        def stream_response() -> web.StreamResponse:  # headers as they stand when it begins
            response = web.StreamResponse(headers=_headers(notices))
            response.content_type = "text/event-stream"
            response.headers["Cache-Control"] = "no-cache"
            response.headers["X-Accel-Buffering"] = "no"
            return response

        opening = Opening(request, stream_response, KEEPALIVE, self._door.keepalive_seconds)
        response: web.StreamResponse | None = None
        try:
            async with aclosing(self._events(prepared, True, notices)) as events:
                async for event in events:
                    if response is None:  # the first event: now the status is known
                        response = await opening.open()
                    await response.write(
                        b"".join(
                            b"data: " + orjson.dumps(c) + b"\n\n" for c in render.chunks(event)
                        )
                    )
        except Exception as failure:
            await opening.stop()
            if opening.response is None:  # nothing sent yet: a real status
                raise
            error = _known(failure)
            body = error_body(error, http_status(error))
            await opening.response.write(b"data: " + orjson.dumps(body) + b"\n\n")
            await opening.response.write_eof()
            return opening.response
        finally:
            await opening.stop()
        if response is None:  # the relay always starts or raises; never an empty 200
            raise SwitchboardError("the completion ended before it started")
        await response.write(DONE)
        await response.write_eof()
        return response
