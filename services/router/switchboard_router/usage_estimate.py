"""Token estimates: for providers that report no usage, for generations cut short before the
provider's final usage, and for worst-case reservations.

**A generation cut short** (the client cancelled, the upstream failed midway, the router died)
is billed with :func:`estimated_usage`, marked ``estimated``:

- *Prompt*: the provider's own counts when it sent them early (Anthropic's ``message_start``,
  Gemini's running ``usageMetadata``), else :func:`estimate_prompt_tokens`.
- *Visible output*: the streamed text counted with the model's own tokenizer where one runs
  here (:mod:`.token_count`: OpenAI's models and Llama 3, by :func:`cut_usage`), else about
  four streamed characters a token (:func:`estimate_tokens`); at least what the provider's
  running counts said (Gemini's ``candidatesTokenCount``). The prompt, when the provider sent
  no counts of it, is counted the same way, with OpenAI's chat framing
  (:data:`TOKENS_PER_MESSAGE`, :data:`TOKENS_PER_REPLY`).
- *Reasoning*: the provider may be thinking without streaming what it thinks (Gemini's
  thoughts without ``includeThoughts``, OpenAI's reasoning models, Anthropic's summarised
  thinking, billed in full). Billed as the most of: the streamed reasoning's count;
  the provider's running count when it sends one (Gemini's ``thoughtsTokenCount``: exact up to
  its last chunk); else, when reasoning is known to be on (the request asked for it, or the
  provider streamed some), :func:`hidden_reasoning_allowance`: a lower bound from the time the
  model spent before its first visible output, capped by the reasoning budget.

The allowance is ``REASONING_TOKENS_PER_SECOND`` (20) tokens a second of
``(first visible output, or the cut) - (request sent) - prefill_seconds(prompt)``, where
``prefill_seconds`` allows ``PREFILL_BASE_SECONDS`` (1 s) plus a second per
``PREFILL_TOKENS_PER_SECOND`` (5,000) prompt tokens for queueing and reading the prompt. Reasoning
models decode at 50 to 200 tokens a second on their first-party hosts (Gemini 2.5 Pro, o3,
Claude with extended thinking), so 20 a second undercounts: it never bills more than was
produced, and it bills the part of the thinking that the wait itself proves. It is capped by the
request's reasoning budget, else the completion budget (:func:`completion_budget`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from switchboard_core.usage_bounds import MAX_COMPLETION_TOKENS, MAX_PROMPT_TOKENS, usage_problems
from switchboard_router.canonical import (
    CompletionRequest,
    PromptUsage,
    ReasoningEffort,
    TextPart,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.token_count import count_tokens

# Characters counted per message for its role and framing.
MESSAGE_FRAMING_CHARS = 16
# Tokens counted for one image when estimating usage: OpenAI's high-detail 1024x1024 tile
# count is 765; other providers land in the same range (Anthropic ~1,600 at most, Gemini 258 a
# tile). Reservations count the most any of them charges.
IMAGE_TOKEN_ESTIMATE = 1000
IMAGE_TOKEN_MAX = 1600
# Reservations count a token per three UTF-8 bytes: generous for English (about four
# characters, four bytes, a token) and about right for CJK text (three bytes a character, about
# a token each), where four characters a token would undercount up to fourfold.
RESERVATION_BYTES_PER_TOKEN = 3
# Tokens a provider adds to a prompt of its own (Anthropic's tool-use system prompt is ~350):
# counted in the most tokens a prompt can be (prompt_tokens_bound).
PROMPT_OVERHEAD_TOKENS = 1024
# The hidden-reasoning allowance (see the module docstring).
REASONING_TOKENS_PER_SECOND = 20
PREFILL_BASE_SECONDS = 1.0
PREFILL_TOKENS_PER_SECOND = 5000
# OpenAI's chat framing, for a prompt counted with the tokenizer: each message's separators
# (3) and role (1), and the priming of the reply (OpenAI's cookbook; the recorded gpt-4o
# prompt "What's the weather like in SF?", 7 tokens, was billed 7 + 4 + 3 = 14).
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
# How long a cut stream's usage (its ledger event and settle, not the client) waits for the
# tokenizer before the characters decide: the first cut starts its worker and reads the
# encoding (~0.5 s on an idle machine).
TOKEN_COUNT_TIMEOUT_SECONDS = 5.0


def estimate_tokens(chars: int) -> int:
    """About four characters a token: the usual estimate when a provider reports nothing."""
    return (chars + 3) // 4


def _prompt_texts(request: CompletionRequest) -> Iterator[str]:
    for m in request.messages:
        yield m.text
        for call in m.tool_calls:
            yield call.name
            yield call.arguments
    for tool in request.tools:
        yield tool.name
        yield tool.description
        yield str(tool.parameters)


def image_count(request: CompletionRequest) -> int:
    """Parts that are not text (images), for token estimates."""
    return sum(1 for m in request.messages for p in m.parts if type(p) is not TextPart)


def cache_marks(request: CompletionRequest) -> frozenset[str]:
    """The cache durations the request's parts ask for (``CACHE_5M`` / ``CACHE_1H``)."""
    return frozenset(getattr(p, "cache", "") for m in request.messages for p in m.parts) - {""}


def prompt_bytes(request: CompletionRequest) -> int:
    """The UTF-8 size of the prompt's text: messages, tool calls and tool definitions."""
    return sum(len(text.encode()) for text in _prompt_texts(request))


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """The prompt's likely token count, for usage a provider did not report."""
    chars = sum(map(len, _prompt_texts(request))) + MESSAGE_FRAMING_CHARS * len(request.messages)
    return estimate_tokens(chars) + image_count(request) * IMAGE_TOKEN_ESTIMATE


@dataclass(frozen=True, slots=True)
class PromptSize:
    """A prompt's UTF-8 size with its framing, and its images: read once, for both the
    reservation's token count and the bound that picks its price tier."""

    size: int
    images: int

    @classmethod
    def of(cls, request: CompletionRequest) -> PromptSize:
        size = prompt_bytes(request) + MESSAGE_FRAMING_CHARS * len(request.messages)
        return cls(size, image_count(request))

    @property
    def reservation_tokens(self) -> int:
        """A generous prompt token count, for reserving a request's worst-case cost."""
        return -(-self.size // RESERVATION_BYTES_PER_TOKEN) + self.images * IMAGE_TOKEN_MAX

    @property
    def tokens_bound(self) -> int:
        """The most tokens the prompt can be: a token is at least one UTF-8 byte (byte-level
        BPE, and SentencePiece with byte fallback alike), images at the most any provider
        charges, plus what providers add of their own. Decides which price tiers a
        reservation must allow for."""
        return self.size + self.images * IMAGE_TOKEN_MAX + PROMPT_OVERHEAD_TOKENS


def reservation_prompt_tokens(request: CompletionRequest) -> int:
    """A generous prompt token count, for reserving a request's worst-case cost."""
    return PromptSize.of(request).reservation_tokens


def completion_budget(request: CompletionRequest, route: Route) -> int | None:
    """The most completion tokens (hidden reasoning included) the provider was allowed to
    produce, or None when unknown: each of the request's ``n`` choices has the budget, and a
    reasoning budget comes on top (see ``CompletionRequest.thinking_budget``)."""
    budgets = [route.max_completion_tokens] if route.max_completion_tokens > 0 else []
    honoured = not route.supported_parameters or "max_tokens" in route.supported_parameters
    if request.max_tokens and honoured:  # else it was unset before the request was sent
        budgets.append(request.max_tokens)
    if not budgets:
        return None
    return (max(budgets) + request.thinking_budget) * (request.n or 1)


# --- generations cut short ---------------------------------------------------------------


class StreamView(Protocol):
    """What the estimate reads of a generation (``generation.Generation`` provides it)."""

    @property
    def request(self) -> CompletionRequest: ...
    @property
    def route(self) -> Route: ...
    @property
    def text_chars(self) -> int: ...  # every streamed character, reasoning included
    @property
    def reasoning_chars(self) -> int: ...  # of text_chars: streamed reasoning
    @property
    def prompt(self) -> PromptUsage | None: ...
    @property
    def running(self) -> UsageReport | None: ...  # the provider's running counts
    @property
    def sent_at(self) -> float: ...  # monotonic: the request went upstream
    @property
    def visible_at(self) -> float: ...  # monotonic: the first visible output; 0 if none


def asked_for_reasoning(request: CompletionRequest) -> bool:
    """The request turned reasoning on: an effort above none, a budget, or hidden reasoning."""
    r = request.reasoning
    if r is None or not r.enabled or r.effort is ReasoningEffort.NONE:
        return False
    return r.effort is not None or bool(r.max_tokens) or r.exclude


def prefill_seconds(prompt_tokens: int) -> float:
    """Time allowed for queueing and reading the prompt before any output (a generous bound)."""
    return PREFILL_BASE_SECONDS + prompt_tokens / PREFILL_TOKENS_PER_SECOND


def hidden_reasoning_allowance(view: StreamView, now: float, prompt_tokens: int) -> int:
    """The reasoning tokens the wait before the first visible output proves (module docstring):
    at least 0, at most the reasoning budget (else the completion budget)."""
    start = view.sent_at
    if start <= 0:
        return 0
    end = view.visible_at or now
    seconds = end - start - prefill_seconds(prompt_tokens)
    if seconds <= 0:
        return 0
    cap = view.request.thinking_budget or completion_budget(view.request, view.route)
    tokens = int(seconds * REASONING_TOKENS_PER_SECOND)
    return min(tokens, cap if cap is not None else MAX_COMPLETION_TOKENS)


def plausible_prompt(prompt: PromptUsage) -> bool:
    """Whether the prompt counts a provider sent early are within bounds and add up."""
    return not usage_problems(
        prompt.prompt_tokens,
        0,
        prompt.cached_tokens,
        0,
        prompt.cache_write_tokens,
        cache_write_1h_tokens=prompt.cache_write_1h_tokens,
    )


def _provider_counted_prompt(view: StreamView) -> bool:
    """Whether the provider sent counts of the prompt that :func:`_prompt_side` uses."""
    running, prompt = view.running, view.prompt
    return (running is not None and running.prompt_tokens > 0) or (
        prompt is not None and plausible_prompt(prompt)
    )


def _prompt_side(view: StreamView, counted: int | None = None) -> UsageReport:
    """The prompt's counts (completion zero): the provider's running or early counts when
    plausible, else the tokenizer's count (``counted``), else the estimate."""
    running = view.running
    if running is not None and running.prompt_tokens > 0:
        return UsageReport(
            prompt_tokens=running.prompt_tokens,
            completion_tokens=0,
            cached_tokens=running.cached_tokens,
            cache_write_tokens=running.cache_write_tokens,
            cache_write_1h_tokens=running.cache_write_1h_tokens,
            audio_prompt_tokens=running.audio_prompt_tokens,
            image_prompt_tokens=running.image_prompt_tokens,
            video_prompt_tokens=running.video_prompt_tokens,
            cached_audio_tokens=running.cached_audio_tokens,
        )
    prompt = view.prompt
    if prompt is not None and plausible_prompt(prompt):
        return UsageReport(
            prompt_tokens=prompt.prompt_tokens,
            completion_tokens=0,
            cached_tokens=prompt.cached_tokens,
            cache_write_tokens=prompt.cache_write_tokens,
            cache_write_1h_tokens=prompt.cache_write_1h_tokens,
        )
    estimate = estimate_prompt_tokens(view.request) if counted is None else counted
    return UsageReport(prompt_tokens=min(estimate, MAX_PROMPT_TOKENS), completion_tokens=0)


@dataclass(frozen=True, slots=True)
class Counted:
    """Counts from the model's tokenizer: the prompt's (None: not counted, as when the
    provider sent its own), the visible output's and the streamed reasoning's."""

    prompt: int | None
    visible: int
    reasoning: int


def estimated_usage(view: StreamView, now: float, counted: Counted | None = None) -> UsageReport:
    """What a generation without the provider's final usage is billed, marked estimated: see
    the module docstring. ``now`` (monotonic) is when it was cut, or is being recorded;
    ``counted``, the tokenizer's counts (else characters are counted)."""
    prompt = _prompt_side(view, counted.prompt if counted is not None else None)
    reasoning_chars = min(view.reasoning_chars, view.text_chars)
    if counted is not None:
        visible, reasoning = counted.visible, counted.reasoning
    else:
        visible = estimate_tokens(view.text_chars - reasoning_chars)
        reasoning = estimate_tokens(reasoning_chars)
    running = view.running
    audio_out = web_searches = 0
    if running is not None:
        visible = max(visible, running.completion_tokens - running.reasoning_tokens)
        reasoning = max(reasoning, running.reasoning_tokens)
        audio_out, web_searches = running.audio_completion_tokens, running.web_searches
    elif reasoning_chars or asked_for_reasoning(view.request):
        reasoning = max(reasoning, hidden_reasoning_allowance(view, now, prompt.prompt_tokens))
    completion = min(visible + reasoning, MAX_COMPLETION_TOKENS)
    return UsageReport(
        prompt_tokens=prompt.prompt_tokens,
        completion_tokens=completion,
        cached_tokens=prompt.cached_tokens,
        reasoning_tokens=min(reasoning, completion),
        cache_write_tokens=prompt.cache_write_tokens,
        estimated=True,
        cache_write_1h_tokens=prompt.cache_write_1h_tokens,
        audio_prompt_tokens=prompt.audio_prompt_tokens,
        image_prompt_tokens=prompt.image_prompt_tokens,
        video_prompt_tokens=prompt.video_prompt_tokens,
        cached_audio_tokens=prompt.cached_audio_tokens,
        audio_completion_tokens=min(audio_out, completion - min(reasoning, completion)),
        web_searches=web_searches,
    )


# --- counted with the tokenizer ----------------------------------------------------------


class CutView(StreamView, Protocol):
    """What :func:`cut_usage` reads besides :class:`StreamView` (``Generation`` provides it)."""

    @property
    def usage(self) -> UsageReport | None: ...  # the provider's final usage, if it came
    @property
    def visible_texts(self) -> Sequence[str]: ...  # streamed text, tool calls, refusals
    @property
    def reasoning_texts(self) -> Sequence[str]: ...  # streamed reasoning


def prompt_token_count(request: CompletionRequest, texts: Sequence[int]) -> int:
    """The prompt's tokens from its texts' counts (``_prompt_texts`` order): OpenAI's chat
    framing added, images at :data:`IMAGE_TOKEN_ESTIMATE`."""
    framing = TOKENS_PER_MESSAGE * len(request.messages) + TOKENS_PER_REPLY
    return sum(texts) + framing + image_count(request) * IMAGE_TOKEN_ESTIMATE


async def count_cut(view: CutView, timeout: float = TOKEN_COUNT_TIMEOUT_SECONDS) -> Counted | None:
    """The tokenizer's counts of a generation cut short, or None where no tokenizer fits the
    model or it did not answer in ``timeout`` seconds (:func:`.token_count.count_tokens`)."""
    prompt = () if _provider_counted_prompt(view) else tuple(_prompt_texts(view.request))
    parts = [tuple(view.visible_texts), tuple(view.reasoning_texts), *((t,) for t in prompt)]
    counts = await count_tokens(view.route.upstream_model or view.route.model_id, parts, timeout)
    if counts is None:
        return None
    visible, reasoning, *texts = counts
    return Counted(prompt_token_count(view.request, texts) if prompt else None, visible, reasoning)


async def cut_usage(view: CutView, now: float) -> UsageReport:
    """What a generation cut short at ``now`` (monotonic) is billed: the provider's final
    usage if it came, else :func:`estimated_usage` with the output (and the prompt, if the
    provider sent no counts of it) counted by the model's tokenizer where one fits."""
    if view.usage is not None:
        return view.usage
    return estimated_usage(view, now, await count_cut(view))
