"""The demo upstream: ``POST /v1/chat/completions`` in OpenAI's real wire format.

Answers deterministically, streaming (SSE ``chat.completion.chunk`` events, usage in the last
chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``) or not. A reply is
``reply_tokens`` word tokens long, or ``max_tokens`` when that is smaller (finish reason
``length``). Tokens are whitespace-separated words, so counts are exact and easy to check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

MODEL = "demo"
WORDS = (
    "Switchboard routes every request to the best endpoint and meters each token exactly "
    "so platform teams can trust the bill while their services stream answers in real time"
).split()


@dataclass(frozen=True)
class DemoSettings:
    reply_tokens: int = 20
    token_delay_seconds: float = 0.0


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Words of every message, plus 3 per message for the chat template."""
    return sum(len(str(m.get("content") or "").split()) + 3 for m in messages)


def reply_words(count: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(count)]


def _error(status: int, message: str, param: str | None, code: str) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return web.json_response(body, status=status)


def _validate(body: Any) -> web.Response | None:
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.", None, "invalid_json")
    if body.get("model") != MODEL:
        return _error(
            404,
            f"The model `{body.get('model')}` does not exist.",
            "model",
            "model_not_found",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' must be a non-empty array.", "messages", "invalid_value")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return _error(
            400, "'max_tokens' must be a positive integer.", "max_tokens", "invalid_value"
        )
    return None


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


class DemoUpstream:
    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.health)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "owned_by": "switchboard"}],
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "The request body is not valid JSON.", None, "invalid_json")
        problem = _validate(body)
        if problem is not None:
            return problem
        limit = body.get("max_tokens") or self.settings.reply_tokens
        words = reply_words(min(limit, self.settings.reply_tokens))
        finish = "length" if limit < self.settings.reply_tokens else "stop"
        prompt = count_prompt_tokens(body["messages"])
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": _usage(prompt, len(words)),
                    "system_fingerprint": None,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._stream(request, ident, created, words, finish, prompt, include_usage)

    async def _stream(
        self,
        request: web.Request,
        ident: str,
        created: int,
        words: list[str],
        finish: str,
        prompt: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None, choices: bool = True) -> bytes:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ]
                if choices
                else [],
            }
            if include_usage:
                data["usage"] = None
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        try:
            await response.write(chunk({"role": "assistant", "content": "", "refusal": None}, None))
            for i, word in enumerate(words):
                if self.settings.token_delay_seconds:
                    await asyncio.sleep(self.settings.token_delay_seconds)
                await response.write(chunk({"content": word if i == 0 else " " + word}, None))
            await response.write(chunk({}, finish))
            if include_usage:
                last = json.loads(chunk({}, None, choices=False)[6:])
                last["usage"] = _usage(prompt, len(words))
                await response.write(b"data: " + json.dumps(last).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-stream: stop generating
            log.debug("client disconnected mid-stream")
        return response


async def start(host: str, port: int, settings: DemoSettings) -> tuple[web.AppRunner, int]:
    """Start the demo upstream; returns the runner (to clean up) and the bound port."""
    runner = web.AppRunner(DemoUpstream(settings).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return runner, bound
