"""The canonical request and the events every provider adapter yields.

Adapters translate a :class:`CompletionRequest` into their provider's wire format and the
provider's stream back into :data:`AdapterEvent` values. The relay never sees wire formats.

Streamed tool calls arrive as :class:`ToolCallDelta` values: the first delta of a call carries
its ``index``, ``id`` and ``name``; later deltas of the same ``index`` carry fragments of the
JSON ``arguments`` text. Concatenating the fragments gives the call's arguments object.

Output events carry ``choice``: the candidate they belong to when a request asks for ``n`` > 1
(0 otherwise). Reasoning that must go back to the provider on the next turn (Anthropic's signed
thinking and redacted thinking, Gemini's thought signatures) arrives as :class:`ReasoningDelta`
pieces with a ``format``; the relay assembles them into :class:`ReasoningBlock` values that the
client returns unchanged in the assistant message (OpenRouter's ``reasoning_details``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any


class Role(IntEnum):
    SYSTEM = 1
    USER = 2
    ASSISTANT = 3
    TOOL = 4


class Finish(IntEnum):
    """Mirrors ``switchboard.common.v1.FinishReason`` numbers."""

    UNSPECIFIED = 0
    STOP = 1
    LENGTH = 2
    TOOL_CALLS = 3
    CONTENT_FILTER = 4
    ERROR = 5
    CANCELLED = 6


# How long a cached prompt prefix lives (``cache`` on a part): "" for no cache mark.
CACHE_5M = "5m"
CACHE_1H = "1h"


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str
    # The prompt up to and including this part is a prefix to cache: "", CACHE_5M or CACHE_1H.
    cache: str = ""


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image given by URL (``https:`` or ``data:``) or as inline bytes with a media type."""

    url: str = ""
    data: bytes = b""
    mime_type: str = ""
    detail: str = ""  # "", "low", "high" or "auto" (OpenAI's hint; others ignore it)
    cache: str = ""  # as TextPart.cache

    def inline(self) -> tuple[str, bytes] | None:
        """(media type, bytes) when the image is inline or a ``data:`` URL; None for a link."""
        if self.data:
            return self.mime_type, self.data
        if self.url.startswith("data:"):
            header, _, payload = self.url[5:].partition(",")
            mime, _, encoding = header.partition(";")
            if encoding != "base64":
                return None
            try:
                return mime, base64.b64decode(payload, validate=True)
            except binascii.Error:
                return None
        return None

    def as_url(self) -> str:
        """A URL for providers that take one: the link itself, or a ``data:`` URL."""
        if self.data:
            return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode()}"
        return self.url


Part = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: ``arguments`` is the JSON text of an object. ``signature`` is
    an opaque token the provider bound to the call (Gemini's ``thoughtSignature``), sent back
    unchanged with the call on the next turn."""

    id: str
    name: str
    arguments: str
    signature: str = ""


# Reasoning formats: which provider issued a reasoning block (OpenRouter's names). A block is
# sent back only to an adapter of the same format; other providers cannot verify it.
ANTHROPIC_REASONING = "anthropic-claude-v1"
GEMINI_REASONING = "google-gemini-v1"


@dataclass(frozen=True, slots=True)
class ReasoningBlock:
    """One reasoning block of an assistant turn, as the provider returned it.

    ``text`` is the reasoning (Anthropic thinking, a Gemini thought summary); ``signature``
    the provider's signature over it; ``redacted`` opaque encrypted reasoning (Anthropic
    ``redacted_thinking`` data). Sent back verbatim: providers verify the signature.
    """

    format: str
    text: str = ""
    signature: str = ""
    redacted: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...]
    name: str = ""
    # ROLE_TOOL: the call this message answers.
    tool_call_id: str = ""
    # ROLE_ASSISTANT: the calls the model made in this turn.
    tool_calls: tuple[ToolCall, ...] = ()
    # ROLE_ASSISTANT: the reasoning blocks the provider returned with this turn, in order.
    reasoning: tuple[ReasoningBlock, ...] = ()

    @classmethod
    def of(cls, role: Role, text: str, **kwargs: Any) -> Message:
        return cls(role, (TextPart(text),) if text else (), **kwargs)

    @property
    def text(self) -> str:
        """The message's text parts joined (images left out)."""
        return "".join(p.text for p in self.parts if type(p) is TextPart)

    @property
    def has_image(self) -> bool:
        return any(type(p) is ImagePart for p in self.parts)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


class ToolChoiceMode(StrEnum):
    AUTO = "auto"  # the model decides
    NONE = "none"  # no tool calls
    REQUIRED = "required"  # at least one tool call, any tool
    TOOL = "tool"  # call the named tool


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str = ""  # with ToolChoiceMode.TOOL


class ResponseFormatKind(StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    kind: ResponseFormatKind
    name: str = ""  # JSON_SCHEMA: the schema's name
    schema: dict[str, Any] | None = None  # JSON_SCHEMA: the schema
    strict: bool = False


class ReasoningEffort(StrEnum):
    NONE = "none"
    MINIMAL = "minimal"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class ReasoningConfig:
    """OpenRouter's ``reasoning`` request object: how much the model should think.

    Give ``effort`` or ``max_tokens`` (a thinking budget), not both; neither means the
    provider's default amount. ``exclude``: the model reasons but the reasoning text is not
    relayed (signed blocks needed for the next turn still are). ``enabled=False`` asks for no
    reasoning where the model allows it.
    """

    effort: ReasoningEffort | None = None
    max_tokens: int | None = None
    exclude: bool = False
    enabled: bool = True

    @property
    def thinks(self) -> bool:
        """Whether this asks the model to think (it may then be silent a long while)."""
        return self.enabled and self.effort != ReasoningEffort.NONE


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Cut-offs on an endpoint's live figures by percentile (router.v1 PerformanceCutoffs):
    throughput in output tokens per second, latency in seconds; None where not set."""

    p50: float | None = None
    p75: float | None = None
    p90: float | None = None
    p99: float | None = None


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """Hedging as resolved from ``common.v1.Hedging`` (the request's, else the model's, else
    the router's default). ``delay`` in seconds; ``percentile`` 0 for a fixed delay, else the
    live time-to-first-token percentile that replaces ``delay`` once the endpoint has figures."""

    enabled: bool = False
    delay: float = 0.0
    percentile: int = 0


NO_HEDGE = HedgePolicy()


@dataclass(frozen=True, slots=True)
class ProviderPrefs:
    order: tuple[str, ...] = ()
    only: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str = ""  # "", "price", "throughput", "latency"
    max_prompt_price: Decimal | None = None  # USD per million tokens
    max_completion_price: Decimal | None = None
    require_parameters: bool = False
    # Data policy filters (OpenRouter data_collection "deny", zdr, quantizations).
    deny_data_collection: bool = False
    zdr: bool = False
    quantizations: frozenset[str] = frozenset()
    # Live-figure preferences: endpoints missing a cut-off are demoted, not dropped.
    min_throughput: Cutoffs | None = None
    max_latency: Cutoffs | None = None
    # The request's hedging; None: inherit the model's, else the router's default.
    hedge: HedgePolicy | None = None


# Optional request fields, by the parameter names the catalog's `supported_parameters` uses
# (OpenRouter's names). "structured_outputs" is a JSON-schema response_format: hosts that only
# do JSON mode support "response_format" but not "structured_outputs".
PARAMETER_FIELDS: dict[str, str] = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop": "stop",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "parallel_tool_calls": "parallel_tool_calls",
    "response_format": "response_format",
    "structured_outputs": "response_format",
    "reasoning": "reasoning",
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
    "n": "n",
}


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning: ReasoningConfig | None = None
    logprobs: bool | None = None  # return each output token's log probability
    top_logprobs: int | None = None  # and this many most likely alternatives (needs logprobs)
    n: int | None = None  # how many candidates to generate (choices)
    user: str = ""
    fallback_models: tuple[str, ...] = ()
    provider: ProviderPrefs = field(default_factory=ProviderPrefs)

    def set_parameters(self) -> frozenset[str]:
        """Names of the optional parameters this request sets (for require_parameters)."""
        names = {
            name for name, attr in PARAMETER_FIELDS.items() if getattr(self, attr) not in (None, ())
        }
        fmt = self.response_format
        if fmt is None or fmt.kind != ResponseFormatKind.JSON_SCHEMA:
            names.discard("structured_outputs")
        return frozenset(names)

    def without(self, parameters: frozenset[str]) -> CompletionRequest:
        """This request with the named optional parameters unset."""
        if not parameters:
            return self
        changes: dict[str, Any] = {}
        for name in parameters:
            attr = PARAMETER_FIELDS[name]
            changes[attr] = () if isinstance(getattr(self, attr), tuple) else None
        return dataclasses.replace(self, **changes)

    @property
    def has_image(self) -> bool:
        return any(m.has_image for m in self.messages)

    @property
    def thinking_budget(self) -> int:
        """Tokens the request allows for reasoning on top of ``max_tokens``: a reasoning
        ``max_tokens`` may raise the output bound the provider is sent (Anthropic needs
        ``max_tokens`` above ``budget_tokens``), so reservations and the usage check count it."""
        reasoning = self.reasoning
        if reasoning is None or not reasoning.enabled or reasoning.max_tokens is None:
            return 0
        return reasoning.max_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    choice: int = 0


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning, sent by the provider apart from the answer.

    Reasoning the provider needs back on the next turn has a ``format`` (one of the
    ``*_REASONING`` names) and a ``block``: pieces of one block share its number, their texts
    concatenate, and ``signature`` / ``redacted`` arrive in some piece of the block (Anthropic's
    ``signature_delta``, a ``redacted_thinking`` block, a Gemini ``thoughtSignature``).
    Reasoning without a format (OpenAI-compatible hosts) is text only.
    """

    text: str
    choice: int = 0
    format: str = ""
    block: int = 0
    signature: str = ""
    redacted: str = ""


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """A piece of the model's refusal (OpenAI ``delta.refusal``), apart from the answer."""

    text: str
    choice: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call; ``id``, ``name`` and ``signature`` come with a call's
    first piece."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""
    choice: int = 0
    signature: str = ""


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One output token's log probability and, when asked, the most likely alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class LogprobsDelta:
    """Log probabilities of output tokens (of the answer, or of a refusal)."""

    tokens: tuple[TokenLogprob, ...]
    choice: int = 0
    refusal: bool = False


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """What the provider said beyond text and usage, passed through rather than dropped:
    citations and grounding, safety ratings, stop details, ``finishMessage``. ``data`` is a
    JSON object keyed by what it holds (``grounding_metadata``, ``safety_ratings``,
    ``stop_details``, ...); a later event's key replaces an earlier one's."""

    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Token counts in canonical terms, whatever the provider calls them.

    ``prompt_tokens`` includes cached and cache-write tokens; ``completion_tokens`` includes
    reasoning tokens.

    A report marked ``estimated`` that comes before the stream's end is the provider's running
    counts so far (Gemini's ``usageMetadata`` on each chunk): the relay keeps it only as a
    floor for what a stream cut short is billed (hidden reasoning included), never as the
    final usage.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False
    # Parts of the totals above, where the provider reports them (``common.v1.Usage``):
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, written for an hour
    audio_prompt_tokens: int = 0  # of prompt_tokens (cached audio included)
    image_prompt_tokens: int = 0
    video_prompt_tokens: int = 0
    cached_audio_tokens: int = 0  # of cached_tokens
    audio_completion_tokens: int = 0  # of completion_tokens
    web_searches: int = 0  # searches the provider billed apart


@dataclass(frozen=True, slots=True)
class FinishEvent:
    reason: Finish
    native_reason: str = ""
    choice: int = 0


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """The prompt's exact token counts, known before the completion ends (Anthropic's
    ``message_start``, Gemini's running ``usageMetadata``): a stream cut short is then billed
    for its real prompt, not an estimate of it."""

    prompt_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, written for an hour


AdapterEvent = (
    TextDelta
    | ReasoningDelta
    | RefusalDelta
    | ToolCallDelta
    | LogprobsDelta
    | ProviderMetadata
    | PromptUsage
    | UsageReport
    | FinishEvent
)


def tool_name_for(messages: tuple[Message, ...], tool_call_id: str) -> str:
    """The function name of an earlier assistant tool call (providers that key results by name)."""
    for message in reversed(messages):
        for call in message.tool_calls:
            if call.id == tool_call_id:
                return call.name
    return ""


def reasoning_blocks(pieces: list[ReasoningDelta]) -> tuple[ReasoningBlock, ...]:
    """The blocks that ``pieces`` (one choice's reasoning deltas, in order) make up: pieces
    with a format are grouped by block number, texts and redacted data concatenated and the
    last signature kept. Reasoning without a format needs no round trip and makes none."""
    blocks: dict[tuple[str, int], list[str]] = {}
    for piece in pieces:
        if not piece.format:
            continue
        block = blocks.setdefault((piece.format, piece.block), ["", "", ""])
        block[0] += piece.text
        block[1] = piece.signature or block[1]
        block[2] += piece.redacted
    return tuple(
        ReasoningBlock(fmt, text, signature, redacted)
        for (fmt, _), (text, signature, redacted) in blocks.items()
    )
