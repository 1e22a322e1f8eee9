"""What a fake provider answers, said once for every wire format.

Each fake provider server (``tests/fakes/<provider>_server.py``) renders a :class:`Script` in
its provider's real wire format, streaming (SSE) or not, so the conformance suite can ask every
adapter the same questions and check the same canonical answers, and each provider's official
SDK can check that the fake speaks the real format.

Every fake module exposes::

    @asynccontextmanager
    async def serve(script: Script) -> AsyncIterator[FakeProvider]: ...

and the yielded :class:`FakeProvider`'s ``base_url`` goes into ``Target.base_url`` unchanged.
Set ``fake.script`` to change what later requests get, and ``fake.inject(Faults(...))`` to
make it fail or dawdle request by request (:mod:`tests.fakes.faults`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.faults import FaultInjector, Faults


@dataclass(frozen=True)
class ScriptToolCall:
    id: str
    name: str
    # The arguments JSON text in the pieces to stream it in; joined, they are a JSON object.
    arguments: tuple[str, ...]

    @property
    def arguments_json(self) -> str:
        return "".join(self.arguments)


@dataclass(frozen=True)
class ScriptUsage:
    """Canonical counts: prompt includes cached and cache-write; completion includes reasoning.

    Each fake converts them to its provider's terms (Anthropic's ``input_tokens`` excludes cache
    reads and writes; Gemini's ``candidatesTokenCount`` excludes ``thoughtsTokenCount``).
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Script:
    # Text, one content chunk per element (an empty element is an empty delta).
    text: tuple[str, ...] = ("Hello", ", ", "world", "!")
    # Reasoning before the text, one chunk per element. Only the OpenAI-compatible fake sends
    # it, in the delta field named by ``reasoning_field``: DeepSeek and vLLM use
    # "reasoning_content", Groq and OpenRouter "reasoning".
    reasoning: tuple[str, ...] = ()
    reasoning_field: str = "reasoning_content"
    # Tool calls after the text; every arguments piece is one chunk.
    tool_calls: tuple[ScriptToolCall, ...] = ()
    # Canonical finish: "stop", "length", "tool_calls" or "content_filter"; each fake uses its
    # provider's native value (Anthropic "end_turn"/"max_tokens"/"tool_use"/"refusal", Gemini
    # "STOP"/"MAX_TOKENS"/"SAFETY", OpenAI "stop"/"length"/"tool_calls"/"content_filter").
    finish: str = "stop"
    # None: the provider reports no usage at all.
    usage: ScriptUsage | None = ScriptUsage(12, 4)
    # Not 200: answer at once with the provider's error body for this status.
    status: int = 200
    error_message: str = "scripted failure"
    # "" (the status's usual error), or "context_length": the provider's too-long-prompt error.
    error_kind: str = ""
    retry_after: str | None = None  # the retry-after header with an error status
    # After this many content chunks, send the provider's in-stream error event and stop.
    fail_after: int | None = None
    # After this many content chunks, drop the connection without finishing.
    cut_after: int | None = None
    chunk_delay: float = 0.0  # seconds before each chunk
    headers_delay: float = 0.0  # seconds before the response starts (for timeouts)
    # After this many content chunks, go silent with the connection open (a stalled upstream),
    # until the client hangs up.
    stall_after: int | None = None
    # Odd but legal streams: keep-alive comments / pings between events, empty deltas, usage
    # only in the last chunk, events split across network writes.
    odd: bool = False
    # Anthropic and Gemini: send ``reasoning`` as signed thinking (Anthropic: a thinking block
    # whose signature_delta is ``signature_for(its text)``; Gemini: thought parts, and a
    # thoughtSignature on the first function call, or on the last text part when there is no
    # call), and refuse with the provider's 400, as they do, a request whose history holds a
    # tool call without the signed reasoning this fake issued with it.
    signed_reasoning: bool = False
    # Anthropic: redacted_thinking blocks (their opaque data), sent before the thinking.
    redacted_reasoning: tuple[str, ...] = ()
    # OpenAI: refusal text, one delta.refusal chunk per element, instead of content.
    refusal: tuple[str, ...] = ()
    # Fields one fake alone reads go below its marker (one line each, added in place).
    # --- openai ---
    # --- anthropic ---
    prompt_cache: bool = False  # honour cache_control: counts from the prompt (anthropic_cache)
    # --- gemini ---

    @property
    def full_text(self) -> str:
        return "".join(self.text)


def signature_for(text: str) -> str:
    """The signature a fake gives reasoning: deterministic, so the fake can check on the next
    turn that what comes back is what it issued (real providers sign cryptographically)."""
    digest = hashlib.sha256(b"fake-signature:" + text.encode()).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # the parsed JSON body


@dataclass
class FakeProvider:
    base_url: str
    script: Script
    requests: list[RecordedRequest] = field(default_factory=list)
    # Set when a client leaves before a stream ends; the loop time it was noticed.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected_at: float = 0.0
    # Loop time the last response's final byte (or cut) was written.
    finished_at: float = 0.0
    # How it misbehaves, request by request (tests/fakes/faults.py); none by default.
    faults: FaultInjector = field(default_factory=FaultInjector)

    def inject(self, faults: Faults) -> None:
        """Misbehave as ``faults`` say from the next request on (restarting their draw)."""
        self.faults.reset(faults)
