"""Generations cut short before the provider's final usage are billed for the reasoning the
provider was producing but did not stream (``usage_estimate.estimated_usage``): its running
counts where it sends them (Gemini), else a documented allowance when reasoning is known to be
on; always marked estimated.

The issue's example: a Gemini 2.5 Pro stream ($1.25 / $10 per million below 200K) with a
10,000-token prompt, cancelled after 8,000 thought tokens and 800 visible characters. Google
bills 10,000 x $1.25 + 8,200 x $10 per million = $0.0945; the character estimate alone said
10,000 x $1.25 + 200 x $10 = $0.0145.
"""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal

import orjson

from switchboard_core.pricing import PriceSheet, Rates, Tier
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CompletionRequest,
    Message,
    PromptUsage,
    ReasoningConfig,
    ReasoningEffort,
    Role,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.generation import Generation
from switchboard_router.inflight import _mark
from switchboard_router.providers.gemini_stream import StreamState
from switchboard_router.providers.sse import SseEvent
from switchboard_router.usage_estimate import (
    REASONING_TOKENS_PER_SECOND,
    asked_for_reasoning,
    hidden_reasoning_allowance,
    prefill_seconds,
)

D = Decimal
GEMINI_25_PRO = PriceSheet(
    Rates(prompt=D("1.25"), completion=D("10")),
    (Tier(200_000, Rates(prompt=D("2.5"), completion=D("15"))),),
)
ROUTE = Route(
    endpoint_id="google:gemini-2.5-pro",
    model_id="google/gemini-2.5-pro",
    provider_id="google",
    api_format=3,
    base_url="https://generativelanguage.googleapis.com",
    dialect="google",
    upstream_model="gemini-2.5-pro",
    price=GEMINI_25_PRO,
    context_length=1_048_576,
    max_completion_tokens=65_536,
    supported_parameters=frozenset(),
)
REQUEST = CompletionRequest(
    model="google/gemini-2.5-pro", messages=(Message.of(Role.USER, "Prove it."),)
)
SENT = 1_000.0  # monotonic seconds: when the request went upstream


def cut_gemini_stream(**changes: object) -> Generation:
    """The issue's stream as the relay holds it when the client cancels."""
    g = Generation(
        id="gen-cut",
        attempt=0,
        caller=Caller("key_1", "acct"),
        request=REQUEST,
        route=ROUTE,
        started=SENT,
        create_time=time.time(),
        streamed=True,
        first_event_at=SENT + 2,
        text_chars=800,
        prompt=PromptUsage(10_000),
        sent_at=SENT,
        visible_at=SENT + 82,
    )
    for name, value in changes.items():
        setattr(g, name, value)
    return g


def test_the_issues_cancelled_gemini_stream_is_billed_its_thoughts_from_the_running_counts() -> (
    None
):
    # Gemini's last chunk said: 8,000 thought tokens, 180 candidate tokens so far.
    running = UsageReport(10_000, 8_180, reasoning_tokens=8_000, estimated=True)
    g = cut_gemini_stream(running=running)
    usage = g.final_usage(now=SENT + 90)
    assert usage == UsageReport(
        10_000, 8_200, reasoning_tokens=8_000, estimated=True
    )  # 800 characters: 200 visible tokens, more than the 180 counted at the last chunk
    assert g.cost(usage) == D("0.0945")


def test_before_the_fix_the_same_stream_was_estimated_from_its_characters_alone() -> None:
    g = cut_gemini_stream(sent_at=0.0)  # no running counts, no timing: the old method
    usage = g.final_usage(now=SENT + 90)
    assert usage == UsageReport(10_000, 200, estimated=True)
    assert g.cost(usage) == D("0.0145")


def test_the_gemini_adapter_sends_its_running_counts_marked_estimated_then_the_final_ones() -> None:
    def chunk(usage: dict[str, int], finish: str = "") -> SseEvent:
        candidate: dict[str, object] = {"content": {"parts": [{"text": "x"}]}}
        if finish:
            candidate["finishReason"] = finish
        return SseEvent(
            "message", orjson.dumps({"candidates": [candidate], "usageMetadata": usage}).decode()
        )

    state = StreamState("google")
    first = state.feed([chunk({"promptTokenCount": 10_000})])  # thinking: no output counted
    assert [e for e in first if isinstance(e, UsageReport)] == []
    thinking = {"promptTokenCount": 10_000, "thoughtsTokenCount": 8_000, "candidatesTokenCount": 1}
    second = state.feed([chunk(thinking), chunk(thinking)])  # the same counts twice: sent once
    assert [e for e in second if isinstance(e, UsageReport)] == [
        UsageReport(10_000, 8_001, reasoning_tokens=8_000, estimated=True)
    ]
    done = {"promptTokenCount": 10_000, "thoughtsTokenCount": 8_000, "candidatesTokenCount": 250}
    last = state.feed([chunk(done, "STOP")])
    assert [e for e in last if isinstance(e, UsageReport)] == []  # finished: the final follows
    assert [e for e in state.final() if isinstance(e, UsageReport)] == [
        UsageReport(10_000, 8_250, reasoning_tokens=8_000)
    ]


def test_without_running_counts_reasoning_asked_for_is_billed_the_documented_allowance() -> None:
    thinking = replace(REQUEST, reasoning=ReasoningConfig(max_tokens=8_192))
    g = cut_gemini_stream(request=thinking)
    # 82 s before the first visible token, less 1 s + 10,000 / 5,000 s for the prompt: 79 s of
    # thinking at 20 tokens a second (a floor: Gemini 2.5 Pro thinks several times faster).
    allowance = hidden_reasoning_allowance(g, SENT + 90, 10_000)
    assert prefill_seconds(10_000) == 3.0
    assert allowance == 79 * REASONING_TOKENS_PER_SECOND == 1_580
    usage = g.final_usage(now=SENT + 90)
    assert usage == UsageReport(10_000, 1_780, reasoning_tokens=1_580, estimated=True)
    assert g.cost(usage) == D("0.0303")  # between the old $0.0145 and Google's $0.0945
    # Cut while still thinking (no visible output yet): the wait up to the cut counts, capped
    # by the reasoning budget.
    still = cut_gemini_stream(request=thinking, visible_at=0.0, text_chars=0)
    assert still.final_usage(now=SENT + 63).reasoning_tokens == 60 * 20
    assert still.final_usage(now=SENT + 3_600).reasoning_tokens == 8_192


def test_the_allowance_applies_only_where_hidden_reasoning_is_known_to_be_on() -> None:
    assert not asked_for_reasoning(REQUEST)
    assert not asked_for_reasoning(replace(REQUEST, reasoning=ReasoningConfig(enabled=False)))
    off = ReasoningConfig(effort=ReasoningEffort.NONE)
    assert not asked_for_reasoning(replace(REQUEST, reasoning=off))
    assert asked_for_reasoning(replace(REQUEST, reasoning=ReasoningConfig(exclude=True)))
    high = ReasoningConfig(effort=ReasoningEffort.HIGH)
    assert asked_for_reasoning(replace(REQUEST, reasoning=high))
    # Not asked, nothing streamed: a slow answer is not taken for hidden reasoning.
    assert cut_gemini_stream().final_usage(now=SENT + 90).reasoning_tokens == 0
    # Reasoning streamed (a summary): billed at least the wait, whatever the request said.
    summarised = cut_gemini_stream(reasoning_chars=400)
    assert summarised.final_usage(now=SENT + 90).reasoning_tokens == 1_580
    # Without the send time the allowance is never guessed.
    assert hidden_reasoning_allowance(cut_gemini_stream(sent_at=0.0), SENT + 90, 0) == 0


def test_implausible_running_counts_are_never_the_floor() -> None:
    from switchboard_router.usage_sanity import checked_running

    g = cut_gemini_stream()
    honest = UsageReport(10_000, 8_180, reasoning_tokens=8_000, estimated=True)
    assert checked_running(honest, g) is honest
    assert checked_running(replace(honest, completion_tokens=2**40), g) is None
    assert checked_running(replace(honest, completion_tokens=10_000_000), g) is None


def test_the_in_flight_record_is_rewritten_while_hidden_reasoning_goes_on() -> None:
    """Nothing streams while the model thinks: the record changes with the running counts."""
    g = cut_gemini_stream(text_chars=0, visible_at=0.0)
    before = _mark(g)
    g.running = UsageReport(10_000, 4_000, reasoning_tokens=4_000, estimated=True)
    assert _mark(g) != before
    assert g.final_usage().reasoning_tokens == 4_000
