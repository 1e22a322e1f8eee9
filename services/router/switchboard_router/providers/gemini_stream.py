"""Reading Gemini's answers: the SSE stream, a whole JSON body, and the errors inside either.

Every SSE event is a whole ``GenerateContentResponse``: candidates (``index`` each, or their
position) whose content parts carry text, thought summaries (``thought: true``) or whole
function calls, a ``finishReason`` on each candidate's last chunk, cumulative
``usageMetadata``, and per-candidate metadata (``safetyRatings``, ``citationMetadata``,
``groundingMetadata``, ``finishMessage``, ``logprobsResult``). The stream has no end marker:
it is complete when the connection ends after every candidate's finish reason, or after a
``promptFeedback.blockReason`` (the prompt was refused, no candidate comes).

Gemini can also end a 200 stream with an error object that is not framed as an SSE event at
all (``{"error": {"code": 503, ...}}`` on raw lines, after a chunk that already carried
``finishReason``; vercel/ai#5217, python-genai's ``test_async_stream.py``). Read with
``stray=True``, those lines come as ``SseEvent("raw", ...)`` and are parsed like any event: an
error object is the provider's error, whatever came before it, and the partial answer is
never billed as a normal finish.

Thought signatures (https://ai.google.dev/gemini-api/docs/thought-signatures): a signature on
a ``functionCall`` part belongs to that call (:class:`ToolCallDelta.signature`); on a thought
part it closes that run of thought text (one reasoning block); on a text part it is a block of
its own with no text. :func:`switchboard_router.providers.gemini_reasoning.model_parts` puts
each back where it came from on the next turn.

A 200 ``application/json`` body (``generateContent``, or ``streamGenerateContent`` without
``alt=sse``: a JSON array of responses) is the complete answer: :meth:`StreamState.whole`.

Usage (https://ai.google.dev/api/generate-content#UsageMetadata): ``promptTokenCount`` (cached
content included) plus ``toolUsePromptTokenCount`` is the prompt, ``cachedContentTokenCount``
its cached part (explicit caches and implicit cache hits alike); ``candidatesTokenCount`` plus
``thoughtsTokenCount`` is the completion, the thoughts its reasoning. The ``*TokensDetails``
lists (``{"modality", "tokenCount"}``) split them by modality: audio input is
``promptTokensDetails`` AUDIO (cached audio included, as ``UsageReport`` counts it) with
``cacheTokensDetails`` AUDIO its cached part; image and video input are the fresh ones (prompt
less cache details: cached ones cost the cache price); audio output is
``candidatesTokensDetails`` AUDIO. Every streamed chunk carries the usage so far: after each
chunk whose counts grew, a :class:`UsageReport` marked ``estimated`` carries them (the running
counts the relay keeps as a floor should the stream be cut: thoughts are billed whether or not
they are streamed); the final report, unmarked, comes with the finish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from switchboard_router.canonical import (
    GEMINI_REASONING,
    AdapterEvent,
    Finish,
    FinishEvent,
    LogprobsDelta,
    PromptUsage,
    ProviderMetadata,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    UsageReport,
)
from switchboard_router.providers.base import UpstreamError, UpstreamProtocolError, ended_early
from switchboard_router.providers.gemini_errors import error_from_payload
from switchboard_router.providers.sse import SseEvent

# Native finish reasons (https://ai.google.dev/api/generate-content#FinishReason).
FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
FAILED = frozenset(
    {
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "MISSING_THOUGHT_SIGNATURE",
        "MALFORMED_RESPONSE",
    }
)
# Response fields passed through as provider metadata, under snake_case names.
RESPONSE_METADATA = {
    "modelVersion": "model_version",
    "responseId": "response_id",
    "promptFeedback": "prompt_feedback",
}
CANDIDATE_METADATA = {
    "safetyRatings": "safety_ratings",
    "citationMetadata": "citation_metadata",
    "groundingMetadata": "grounding_metadata",
    "urlContextMetadata": "url_context_metadata",
    "finishMessage": "finish_message",
    "avgLogprobs": "avg_logprobs",
}


@dataclass
class Candidate:
    """One candidate's progress: its calls, reasoning blocks and finish."""

    calls: int = 0
    blocks: int = 0
    in_thought: bool = False
    native_finish: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamState:
    provider: str
    usage: dict[str, Any] = field(default_factory=dict)
    candidates: dict[int, Candidate] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    block_reason: str = ""
    error: UpstreamError | None = None
    prompt_reported: bool = False
    running: UsageReport | None = None  # the running counts last sent
    # Never set: the stream is read until the connection ends, since Gemini can send usage,
    # or an error, after the chunk with the finish reasons.
    stopped: bool = field(default=False, init=False)

    @property
    def finished(self) -> bool:
        """The provider said it finished: every candidate has a finish reason, or the prompt
        was blocked."""
        if self.block_reason:
            return True
        return bool(self.candidates) and all(c.native_finish for c in self.candidates.values())

    def feed(self, batch: list[SseEvent]) -> list[AdapterEvent]:
        """The events of one read's SSE events; sets :attr:`error` and stops at an error."""
        out: list[AdapterEvent] = []
        for sse in batch:
            if sse.event == "raw":
                values = _json_values(sse.data)
            else:
                try:
                    values = [orjson.loads(sse.data)]
                except orjson.JSONDecodeError:
                    values = [None]
            for value in values:
                self.chunk(value, out)
                if self.error is not None:
                    return _coalesce(out)
                self._running(out)
        return _coalesce(out)

    def end(self) -> list[AdapterEvent]:
        """After the last read: :meth:`final`'s events when the provider finished; a stream
        that failed relays nothing more, one that ended without finishing ended early."""
        if self.error is None and not self.finished:
            self.error = ended_early(self.provider)
        return [] if self.error is not None else self.final()

    def _running(self, out: list[AdapterEvent]) -> None:
        """The running counts, when they grew and the answer is not finished (the final
        report follows then)."""
        if not self.usage or self.finished:
            return
        report = _usage_report(self.usage, estimated=True)
        if report.completion_tokens and report != self.running:
            self.running = report
            out.append(report)

    def whole(self, body: bytes) -> list[AdapterEvent]:
        """The events of a whole JSON answer, final events included (a complete body without
        a finish reason stopped normally: ``STOP``, native reason empty)."""
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = None
        out: list[AdapterEvent] = []
        self.chunk(value, out)
        if self.error is not None:
            return _coalesce(out)
        if not self.candidates and not self.block_reason:
            self.candidates[0] = Candidate()
        return _coalesce(out) + self.final()

    def chunk(self, value: Any, out: list[AdapterEvent]) -> None:
        """Add one ``GenerateContentResponse`` (or a list of them, or an error object)."""
        if isinstance(value, list):
            for item in value:
                self.chunk(item, out)
                if self.error is not None:
                    return
            return
        if not isinstance(value, dict):
            self.error = UpstreamProtocolError(
                f"{self.provider} sent an event that is not a JSON object",
                provider_id=self.provider,
            )
            return
        if "error" in value:
            error = value["error"]
            self.error = error_from_payload(
                error if isinstance(error, dict) else {}, 500, self.provider
            )
            return
        self._usage(value.get("usageMetadata"), out)
        for wire, name in RESPONSE_METADATA.items():
            if value.get(wire) is not None:
                self.metadata[name] = value[wire]
        feedback = value.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.block_reason = str(feedback["blockReason"])
        for position, candidate in enumerate(value.get("candidates") or ()):
            if isinstance(candidate, dict):
                self._candidate(int(candidate.get("index", position)), candidate, out)

    def _usage(self, usage: Any, out: list[AdapterEvent]) -> None:
        if not isinstance(usage, dict) or not usage:
            return
        self.usage = usage
        if not self.prompt_reported and "promptTokenCount" in usage:
            self.prompt_reported = True
            out.append(
                PromptUsage(
                    int(usage.get("promptTokenCount") or 0)
                    + int(usage.get("toolUsePromptTokenCount") or 0),
                    cached_tokens=int(usage.get("cachedContentTokenCount") or 0),
                )
            )

    def _candidate(self, choice: int, wire: dict[str, Any], out: list[AdapterEvent]) -> None:
        state = self.candidates.setdefault(choice, Candidate())
        for part in (wire.get("content") or {}).get("parts") or ():
            if isinstance(part, dict):
                self._part(choice, state, part, out)
        logprobs = _logprobs(wire.get("logprobsResult"))
        if logprobs:
            out.append(LogprobsDelta(logprobs, choice))
        for key, name in CANDIDATE_METADATA.items():
            if wire.get(key) is not None:
                state.metadata[name] = wire[key]
        if wire.get("finishReason"):
            state.native_finish = str(wire["finishReason"])

    def _part(
        self, choice: int, state: Candidate, part: dict[str, Any], out: list[AdapterEvent]
    ) -> None:
        signature = str(part.get("thoughtSignature") or "")
        text = part.get("text")
        if part.get("thought"):
            if not state.in_thought:
                state.in_thought, state.blocks = True, state.blocks + 1
            if text or signature:
                out.append(
                    ReasoningDelta(
                        str(text or ""), choice, GEMINI_REASONING, state.blocks, signature
                    )
                )
            return
        state.in_thought = False
        call = part.get("functionCall")
        if isinstance(call, dict):
            index = state.calls
            state.calls += 1
            out.append(
                ToolCallDelta(
                    index,
                    id=str(call.get("id") or f"call_{index}"),
                    name=str(call.get("name") or ""),
                    arguments=orjson.dumps(call.get("args") or {}).decode(),
                    choice=choice,
                    signature=signature,
                )
            )
            return
        if isinstance(text, str) and text:
            out.append(TextDelta(text, choice))
        if signature:  # a signed text part: a block of its own, sent back on the text
            state.blocks += 1
            out.append(ReasoningDelta("", choice, GEMINI_REASONING, state.blocks, signature))

    def final(self) -> list[AdapterEvent]:
        """Metadata, usage and one finish per candidate, once the provider finished."""
        out: list[AdapterEvent] = []
        metadata = dict(self.metadata)
        others: list[dict[str, Any]] = []
        for choice, candidate in sorted(self.candidates.items()):
            if choice == 0:
                metadata.update(candidate.metadata)
            elif candidate.metadata:
                others.append({"index": choice, **candidate.metadata})
        if others:
            metadata["candidates"] = others
        if metadata:
            out.append(ProviderMetadata(metadata))
        if self.usage:
            out.append(_usage_report(self.usage))
        if self.block_reason and not self.candidates:
            out.append(FinishEvent(Finish.CONTENT_FILTER, self.block_reason))
        for choice, candidate in sorted(self.candidates.items()):
            native = candidate.native_finish or self.block_reason
            reason = _finish(native, bool(self.block_reason), bool(candidate.calls))
            out.append(FinishEvent(reason, native, choice))
        return out


def _finish(native: str, blocked: bool, called: bool) -> Finish:
    if blocked or native in FILTERED:
        return Finish.CONTENT_FILTER
    if native == "MAX_TOKENS":
        return Finish.LENGTH
    if native in FAILED:
        return Finish.ERROR
    return Finish.TOOL_CALLS if called else Finish.STOP  # Gemini has no tool-call reason


def _usage_report(usage: dict[str, Any], *, estimated: bool = False) -> UsageReport:
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    prompt = _modalities(usage.get("promptTokensDetails"), usage.get("toolUsePromptTokensDetails"))
    cached = _modalities(usage.get("cacheTokensDetails"))
    output = _modalities(usage.get("candidatesTokensDetails"))
    return UsageReport(
        prompt_tokens=int(usage.get("promptTokenCount") or 0)
        + int(usage.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(usage.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=int(usage.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
        estimated=estimated,
        audio_prompt_tokens=prompt.get("AUDIO", 0),
        image_prompt_tokens=max(prompt.get("IMAGE", 0) - cached.get("IMAGE", 0), 0),
        video_prompt_tokens=max(prompt.get("VIDEO", 0) - cached.get("VIDEO", 0), 0),
        cached_audio_tokens=cached.get("AUDIO", 0),
        audio_completion_tokens=output.get("AUDIO", 0),
    )


def _modalities(*lists: Any) -> dict[str, int]:
    """Token counts by modality, summed over ``ModalityTokenCount`` lists."""
    counts: dict[str, int] = {}
    for items in lists:
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and isinstance(item.get("tokenCount"), int):
                modality = str(item.get("modality") or "")
                counts[modality] = counts.get(modality, 0) + item["tokenCount"]
    return counts


def _logprobs(result: Any) -> tuple[TokenLogprob, ...]:
    """``logprobsResult``: the chosen token at each step, and the top alternatives when
    asked (``topCandidates[i]`` belongs to ``chosenCandidates[i]``)."""
    if not isinstance(result, dict):
        return ()
    tops = result.get("topCandidates") or []
    tokens: list[TokenLogprob] = []
    for i, chosen in enumerate(result.get("chosenCandidates") or ()):
        alternatives = tops[i].get("candidates") or () if i < len(tops) else ()
        tokens.append(
            TokenLogprob(
                str(chosen.get("token", "")),
                float(chosen.get("logProbability") or 0.0),
                top=tuple(
                    TopLogprob(str(t.get("token", "")), float(t.get("logProbability") or 0.0))
                    for t in alternatives
                ),
            )
        )
    return tuple(tokens)


def _json_values(text: str) -> list[Any]:
    """Every JSON value in raw stream lines (one object, several, or one spread over many
    lines); text that is no JSON at all is ignored, as the SSE standard ignores it."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            return values
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return values
        values.append(value)


def _coalesce(events: list[AdapterEvent]) -> list[AdapterEvent]:
    """Adjacent text of one choice as one delta, and adjacent pieces of one reasoning block:
    fewer messages to relay, the same result. The prompt's usage goes first: it is no
    output, and the relay counts time to the first output event."""
    out: list[AdapterEvent] = [e for e in events if type(e) is PromptUsage]
    for event in events:
        last = out[-1] if out else None
        if type(event) is PromptUsage:
            continue
        if type(event) is TextDelta and type(last) is TextDelta and last.choice == event.choice:
            out[-1] = TextDelta(last.text + event.text, event.choice)
        elif (
            type(event) is ReasoningDelta
            and type(last) is ReasoningDelta
            and (last.choice, last.format, last.block) == (event.choice, event.format, event.block)
            and not last.signature
        ):
            out[-1] = ReasoningDelta(
                last.text + event.text, event.choice, event.format, event.block, event.signature
            )
        else:
            out.append(event)
    return out
