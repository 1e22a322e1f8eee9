"""Replays streams that providers really sent through the adapters, three ways.

A fixture is two files in ``tests/conformance/recorded/<format>/`` (``openai``, ``anthropic``,
``gemini``; the adapter of that wire format reads it):

- ``<name>.body``: the response body exactly as the provider sent it (bytes, line endings kept);
- ``<name>.json``: where it comes from and what it must give::

      {
        "source": "https://... (the page, SDK test file or bug report it was taken from)",
        "description": "what the stream shows",
        "status": 200,                          # optional, default 200
        "content_type": "text/event-stream",    # optional; "application/json" for whole bodies
        "headers": {"retry-after": "3"},        # optional extra response headers
        "dialect": "mistral",                   # optional: the target's dialect (OpenAI format)
        "request": {...},                       # optional CompletionRequest fields (see below)
        "expect": {...}                         # the canonical result, see :func:`fold`
      }

  ``request`` may set ``max_tokens``, ``n``, ``logprobs``, ``top_logprobs``, ``tools`` (a list
  of ``{"name", "description", "parameters"}``) and ``tool_choice`` (``{"mode", "name"}``).
  ``expect`` lists only what differs from :data:`DEFAULTS`; the whole folded result must equal
  it. ``expect.error`` may carry ``message_contains``, checked as a substring.

Each fixture is served by a local HTTP server three ways, and each must fold to the same
result: one write per SSE event, the whole body in one write, and tiny writes (1 to 11 bytes)
split inside every multi-byte character and between every CR/LF pair. The events pass
through :func:`switchboard_router.providers.guard.guarded` as in the relay.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from switchboard_core.config import Secret
from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    FinishEvent,
    LogprobsDelta,
    Message,
    PromptUsage,
    ProviderMetadata,
    ReasoningDelta,
    RefusalDelta,
    Role,
    TextDelta,
    Tool,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    UsageReport,
    reasoning_blocks,
)
from switchboard_router.providers.anthropic_messages import AnthropicMessagesAdapter
from switchboard_router.providers.base import Adapter, Target, UpstreamError
from switchboard_router.providers.gemini import GeminiAdapter
from switchboard_router.providers.guard import guarded
from switchboard_router.providers.openai_chat import OpenAIChatAdapter

RECORDED = Path(__file__).parent / "recorded"
FORMATS: dict[str, Callable[[aiohttp.ClientSession], Adapter]] = {
    "openai": OpenAIChatAdapter,
    "anthropic": AnthropicMessagesAdapter,
    "gemini": GeminiAdapter,
}
WAYS = ("events", "whole", "tiny")

# The folded result of a stream that said nothing: fixtures state only what differs.
DEFAULTS: dict[str, Any] = {
    "text": "",
    "reasoning": "",
    "reasoning_blocks": [],
    "refusal": "",
    "tool_calls": [],
    "logprobs": [],
    "finish": None,
    "native_finish": None,
    "usage": None,
    "prompt_usage": None,
    "metadata": {},
    "other_choices": [],
    "error": None,
}
CHOICE_KEYS = (
    "text",
    "reasoning",
    "reasoning_blocks",
    "refusal",
    "tool_calls",
    "logprobs",
    "finish",
    "native_finish",
)


@dataclass(frozen=True)
class Fixture:
    format: str
    name: str
    body: bytes
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.format}/{self.name}"

    @property
    def expected(self) -> dict[str, Any]:
        expect = dict(self.meta["expect"])
        error = expect.get("error")
        if isinstance(error, dict):
            expect["error"] = {k: v for k, v in error.items() if k != "message_contains"}
        return {**DEFAULTS, **expect}


def load_fixtures() -> list[Fixture]:
    fixtures = []
    for meta_path in sorted(RECORDED.glob("*/*.json")):
        body_path = meta_path.with_suffix(".body")
        meta = json.loads(meta_path.read_text())
        fixtures.append(
            Fixture(meta_path.parent.name, meta_path.stem, body_path.read_bytes(), meta)
        )
    return fixtures


def request_for(fixture: Fixture) -> CompletionRequest:
    spec = fixture.meta.get("request") or {}
    choice = spec.get("tool_choice")
    return CompletionRequest(
        model="recorded/model",
        messages=(Message.of(Role.USER, "replayed"),),
        max_tokens=spec.get("max_tokens", 1024),
        n=spec.get("n"),
        logprobs=spec.get("logprobs"),
        top_logprobs=spec.get("top_logprobs"),
        tools=tuple(
            Tool(t["name"], t.get("description", ""), t.get("parameters", {"type": "object"}))
            for t in spec.get("tools", ())
        ),
        tool_choice=ToolChoice(ToolChoiceMode(choice["mode"]), choice.get("name", ""))
        if choice
        else None,
    )


# --- serving -------------------------------------------------------------------------------

EVENT_END = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")


def pieces(body: bytes, way: str) -> list[bytes]:
    """``body`` cut as ``way`` says; the pieces always join back to ``body``."""
    if way == "whole" or not body:
        return [body]
    cuts = [m.end() for m in EVENT_END.finditer(body)] if way == "events" else tiny_cuts(body)
    out, start = [], 0
    for cut in cuts:
        if start < cut < len(body):
            out.append(body[start:cut])
            start = cut
    out.append(body[start:])
    return out


def tiny_cuts(body: bytes) -> list[int]:
    """Cut points 1 to 11 bytes apart, plus one inside every multi-byte UTF-8 character and
    one between every CR and LF."""
    cuts = set()
    position, step = 0, 1
    while position < len(body):
        position += step
        cuts.add(position)
        step = step % 11 + 1
    for i in range(1, len(body)):
        if 0x80 <= body[i] < 0xC0:  # a continuation byte: cut before it
            cuts.add(i)
        if body[i] == 0x0A and body[i - 1] == 0x0D:
            cuts.add(i)
    return sorted(cuts)


@asynccontextmanager
async def serve(fixture: Fixture, way: str) -> AsyncIterator[str]:
    """A local server answering every POST with the fixture's body, written as ``way`` says.
    Yields the base URL to give the adapter."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(
            status=int(fixture.meta.get("status", 200)),
            headers={
                "Content-Type": fixture.meta.get("content_type", "text/event-stream"),
                **fixture.meta.get("headers", {}),
            },
        )
        await response.prepare(request)
        for piece in pieces(fixture.body, way):
            await response.write(piece)
            await asyncio.sleep(0)  # let the client read this piece on its own
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def replay(
    fixture: Fixture, way: str, session: aiohttp.ClientSession
) -> tuple[dict[str, Any], str]:
    """Run the fixture's adapter against it: the folded result, and the error's message."""
    adapter = FORMATS[fixture.format](session)
    async with serve(fixture, way) as base_url:
        target = Target(
            "recorded",
            base_url,
            "recorded-model",
            Secret("sk-recorded"),
            dialect=fixture.meta.get("dialect", fixture.format),
        )
        events: list[AdapterEvent] = []
        error: UpstreamError | None = None
        try:
            async for event in guarded(
                adapter.stream(request_for(fixture), target, timeout=10.0), "recorded"
            ):
                events.append(event)
        except UpstreamError as failure:
            error = failure
    return fold(events, error), "" if error is None else str(error)


# --- folding -------------------------------------------------------------------------------


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON: compared as the raw text


def fold(events: list[AdapterEvent], error: UpstreamError | None) -> dict[str, Any]:
    """The canonical result of a stream: what a client would be told, per choice."""
    choices: dict[int, dict[str, Any]] = {}
    reasoning_pieces: dict[int, list[ReasoningDelta]] = {}
    calls: dict[int, dict[int, dict[str, str]]] = {}
    result: dict[str, Any] = {"usage": None, "prompt_usage": None, "metadata": {}}

    def choice(index: int) -> dict[str, Any]:
        return choices.setdefault(
            index,
            {
                "text": "",
                "reasoning": "",
                "refusal": "",
                "logprobs": [],
                "finish": None,
                "native_finish": None,
            },
        )

    for event in events:
        if isinstance(event, TextDelta):
            choice(event.choice)["text"] += event.text
        elif isinstance(event, ReasoningDelta):
            choice(event.choice)["reasoning"] += event.text
            reasoning_pieces.setdefault(event.choice, []).append(event)
        elif isinstance(event, RefusalDelta):
            choice(event.choice)["refusal"] += event.text
        elif isinstance(event, ToolCallDelta):
            call = calls.setdefault(event.choice, {}).setdefault(
                event.index, {"id": "", "name": "", "arguments": "", "signature": ""}
            )
            call["id"] = call["id"] or event.id
            call["name"] = call["name"] or event.name
            call["signature"] = call["signature"] or event.signature
            call["arguments"] += event.arguments
        elif isinstance(event, LogprobsDelta):
            choice(event.choice)["logprobs"].extend(
                {
                    "token": t.token,
                    "logprob": t.logprob,
                    "top": [[top.token, top.logprob] for top in t.top],
                    **({"refusal": True} if event.refusal else {}),
                }
                for t in event.tokens
            )
        elif isinstance(event, FinishEvent):
            choice(event.choice)["finish"] = event.reason.name
            choice(event.choice)["native_finish"] = event.native_reason
        elif isinstance(event, UsageReport):
            result["usage"] = asdict(event)
        elif isinstance(event, PromptUsage):
            result["prompt_usage"] = asdict(event)
        elif isinstance(event, ProviderMetadata):
            result["metadata"].update(event.data)
    for index in set(calls) | set(reasoning_pieces):
        target = choice(index)
        target["tool_calls"] = [
            {**c, "arguments": _arguments(c["arguments"])}
            for _, c in sorted(calls.get(index, {}).items())
        ]
        target["reasoning_blocks"] = [
            asdict(b) for b in reasoning_blocks(reasoning_pieces.get(index, []))
        ]
    for entry in choices.values():
        entry.setdefault("tool_calls", [])
        entry.setdefault("reasoning_blocks", [])
    first = choices.pop(0, None)
    result.update({key: DEFAULTS[key] for key in CHOICE_KEYS})
    if first is not None:
        result.update(first)
    result["other_choices"] = [
        {"index": index, **{k: v for k, v in entry.items() if v != DEFAULTS[k]}}
        for index, entry in sorted(choices.items())
    ]
    result["error"] = (
        None
        if error is None
        else {"type": type(error).__name__, "reason": error.reason, "status": error.status}
    )
    return result
