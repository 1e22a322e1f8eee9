"""Provider usage reports: honest ones pass untouched (hidden reasoning included), implausible
ones are replaced by the relay's estimate or have their parts clamped, counted and logged with
ids only, and whatever a provider reports, what the relay keeps is an event metering accepts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from switchboard_core.pricing import PriceSheet
from switchboard_core.usage_bounds import (
    MAX_COMPLETION_TOKENS,
    MAX_PROMPT_TOKENS,
    usage_problems,
)
from switchboard_router.admission import worst_case_cost
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
from switchboard_router.generation import Generation, cost_of
from switchboard_router.usage_estimate import completion_budget, reservation_prompt_tokens
from switchboard_router.usage_sanity import (
    COMPLETION_MARGIN_TOKENS,
    checked_usage,
    completion_ceiling,
    distrust_reason,
)

SECRET_PROMPT = "my password is hunter2, summarise my diary"


def route(
    cap: int = 4096, supported: frozenset[str] = frozenset(), provider: str = "acme"
) -> Route:
    return Route(
        endpoint_id=f"{provider}:acme/model",
        model_id="acme/model",
        provider_id=provider,
        api_format=1,
        base_url="https://api.acme.test/v1",
        dialect=provider,
        upstream_model="model",
        price=PriceSheet.flat("3", "15", cached_prompt="0.3", cache_write="3.75"),
        context_length=200_000,
        max_completion_tokens=cap,
        supported_parameters=supported,
    )


def request(max_tokens: int | None = None) -> CompletionRequest:
    return CompletionRequest(
        model="acme/model", messages=(Message.of(Role.USER, SECRET_PROMPT),), max_tokens=max_tokens
    )


@dataclass
class Stream:
    """What the relay knows of a generation when the usage report arrives."""

    text_chars: int = 400
    prompt: PromptUsage | None = None
    route: Route = field(default_factory=route)
    request: CompletionRequest = field(default_factory=request)
    id: str = "gen-test"
    reasoning_chars: int = 0
    running: UsageReport | None = None
    sent_at: float = 0.0  # unknown: no hidden-reasoning allowance
    visible_at: float = 0.0


def distrusted(provider: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchboard_router_usage_reports_distrusted_total",
        {"provider": provider, "reason": reason},
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("report", "stream"),
    [
        (UsageReport(1200, 100, cached_tokens=1000), Stream()),
        # An OpenAI reasoning model: 30K hidden reasoning tokens behind a short answer.
        (
            UsageReport(50, 30_100, reasoning_tokens=30_000),
            Stream(text_chars=300, route=route(cap=100_000)),
        ),
        # Anthropic's redacted thinking: billed as output, not reported as reasoning.
        (UsageReport(50, 3_000), Stream(text_chars=20, request=request(max_tokens=4_000))),
        # No budget known: only the global bound applies, whatever was streamed.
        (UsageReport(10, 1_000_000), Stream(text_chars=0, route=route(cap=0))),
        # Emoji and rare CJK characters can take four tokens each.
        (UsageReport(10, 40_000), Stream(text_chars=10_000, route=route(cap=16))),
        (UsageReport(MAX_PROMPT_TOKENS, MAX_COMPLETION_TOKENS), Stream(route=route(cap=0))),
        (UsageReport(0, 0), Stream(text_chars=0)),
    ],
)
def test_honest_reports_are_kept_as_sent(report: UsageReport, stream: Stream) -> None:
    before = sum(distrusted("acme", r) for r in ("negative", "over_bound", "exceeds_stream"))
    assert checked_usage(report, stream) is report
    after = sum(distrusted("acme", r) for r in ("negative", "over_bound", "exceeds_stream"))
    assert after == before


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (UsageReport(2**62, 10), "over_bound"),
        (UsageReport(2**63 - 10, 10), "over_bound"),
        (UsageReport(10, 2**62), "over_bound"),
        (UsageReport(10, 10, cached_tokens=2**62), "over_bound"),
        (UsageReport(-1, 10), "negative"),
        (UsageReport(10, 10, reasoning_tokens=-5), "negative"),
        (UsageReport(10, 100_000), "exceeds_stream"),
    ],
)
def test_implausible_reports_are_replaced_by_the_estimate(
    report: UsageReport, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = Stream(text_chars=400, route=route(cap=4096, provider="shady"))
    before = distrusted("shady", reason)
    with caplog.at_level(logging.WARNING, logger="switchboard_router.usage_sanity"):
        kept = checked_usage(report, stream)
    # About four characters a token, as when a provider reports nothing.
    assert kept == UsageReport(
        prompt_tokens=kept.prompt_tokens, completion_tokens=100, estimated=True
    )
    assert 0 < kept.prompt_tokens < 100
    assert distrusted("shady", reason) == before + 1
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert (record.generation_id, record.provider, record.reason) == ("gen-test", "shady", reason)  # type: ignore[attr-defined]
    assert "hunter2" not in str(record.__dict__)


def test_the_estimate_keeps_the_prompt_counts_sent_early_when_they_are_plausible() -> None:
    early = PromptUsage(5_000, cached_tokens=4_000, cache_write_tokens=500)
    kept = checked_usage(UsageReport(5_000, 2**62), Stream(prompt=early))
    assert kept == UsageReport(
        5_000, 100, cached_tokens=4_000, cache_write_tokens=500, estimated=True
    )
    # The same provider's early counts poisoned too: the relay estimates the prompt itself.
    poisoned = PromptUsage(2**62, cached_tokens=2**62)
    kept = checked_usage(UsageReport(2**62, 10), Stream(prompt=poisoned))
    assert kept.estimated and 0 < kept.prompt_tokens < 100


def test_parts_that_do_not_add_up_are_clamped_and_cost_the_same() -> None:
    stream = Stream(route=route(provider="quirky"))
    report = UsageReport(1_000, 50, cached_tokens=900, reasoning_tokens=80, cache_write_tokens=300)
    before = distrusted("quirky", "inconsistent_parts")
    kept = checked_usage(report, stream)
    assert kept == UsageReport(
        1_000, 50, cached_tokens=900, reasoning_tokens=50, cache_write_tokens=100
    )
    assert cost_of(stream.route, kept) == cost_of(stream.route, report)
    assert distrusted("quirky", "inconsistent_parts") == before + 1


def test_the_completion_budget_is_what_the_provider_was_allowed() -> None:
    assert completion_budget(request(), route(cap=0)) is None
    assert completion_budget(request(), route(cap=8_192)) == 8_192
    assert completion_budget(request(max_tokens=32_000), route(cap=8_192)) == 32_000
    assert completion_budget(request(max_tokens=100), route(cap=0)) == 100
    # An endpoint that does not honour max_tokens never received it.
    unsupported = route(cap=0, supported=frozenset({"temperature"}))
    assert completion_budget(request(max_tokens=100), unsupported) is None
    supported = route(cap=0, supported=frozenset({"max_tokens"}))
    assert completion_budget(request(max_tokens=100), supported) == 100
    assert completion_ceiling(10, 100) == 40 + 100 + COMPLETION_MARGIN_TOKENS
    assert completion_ceiling(10, None) == MAX_COMPLETION_TOKENS


def test_each_choice_and_a_thinking_budget_widen_the_completion_budget() -> None:
    # n choices each have the bound; a reasoning budget may raise what the provider is sent.
    thinking = ReasoningConfig(max_tokens=4_000)
    assert completion_budget(replace(request(1_000), n=3), route(cap=0)) == 3_000
    assert completion_budget(replace(request(1_000), reasoning=thinking), route(cap=0)) == 5_000
    by_effort = ReasoningConfig(effort=ReasoningEffort.HIGH)  # a share of max_tokens: no more
    assert completion_budget(replace(request(1_000), reasoning=by_effort), route(cap=0)) == 1_000
    off = ReasoningConfig(enabled=False)
    assert completion_budget(replace(request(1_000), reasoning=off), route(cap=0)) == 1_000
    reasoned = replace(request(1_000), reasoning=thinking, n=2)
    assert worst_case_cost(reasoned, [route(cap=0)], 4_096) == cost_of(
        route(cap=0), UsageReport(reservation_prompt_tokens(reasoned), 10_000)
    )


def test_the_relay_generation_is_what_the_check_reads() -> None:
    generation = Generation(
        id="gen-relay",
        attempt=0,
        caller=Caller(key_id="key_1", account_id="acct"),
        request=request(max_tokens=64),
        route=route(cap=0),
        started=time.monotonic(),
        create_time=time.time(),
        streamed=True,
        text_chars=40,
    )
    assert checked_usage(UsageReport(12, 10), generation) == UsageReport(12, 10)
    assert checked_usage(UsageReport(12, 50_000), generation).estimated


@given(
    visible_chars=st.integers(min_value=0, max_value=200_000),
    tokens_per_char=st.integers(min_value=0, max_value=4),
    budget=st.integers(min_value=1, max_value=MAX_COMPLETION_TOKENS),
    hidden_share=st.floats(min_value=0, max_value=1),
    prompt=st.integers(min_value=0, max_value=MAX_PROMPT_TOKENS),
)
def test_no_honest_report_is_ever_replaced(
    visible_chars: int, tokens_per_char: int, budget: int, hidden_share: float, prompt: int
) -> None:
    """An honest completion is its visible tokens (at most four a character) plus hidden
    reasoning, all within the budget the provider enforces."""
    visible = min(visible_chars * tokens_per_char, budget)
    hidden = int((budget - visible) * hidden_share)
    report = UsageReport(prompt, visible + hidden, reasoning_tokens=hidden)
    assert distrust_reason(report, visible_chars, budget) is None


any_count = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(-5, 50_000)


@given(any_count, any_count, any_count, any_count, any_count, st.integers(0, 100_000))
def test_whatever_a_provider_reports_metering_accepts_what_is_kept(
    prompt: int, completion: int, cached: int, reasoning: int, cache_write: int, chars: int
) -> None:
    report = UsageReport(prompt, completion, cached, reasoning, cache_write)
    kept = checked_usage(report, Stream(text_chars=chars))
    assert not usage_problems(
        kept.prompt_tokens,
        kept.completion_tokens,
        kept.cached_tokens,
        kept.reasoning_tokens,
        kept.cache_write_tokens,
    )


def test_a_providers_finish_reason_is_made_fit_for_the_ledger() -> None:
    from switchboard_core.usage_bounds import MAX_TEXT_CHARS, text_problem
    from switchboard_router.canonical import Finish, FinishEvent
    from switchboard_router.usage_sanity import clean_finish

    fine = FinishEvent(Finish.STOP, "end_turn")
    assert clean_finish(fine) is fine
    odd = clean_finish(FinishEvent(Finish.STOP, "stop\x00\x1b[31m" + "x" * 1000))
    assert odd.reason is Finish.STOP
    assert odd.native_reason.startswith("stop[31m")
    assert len(odd.native_reason) == MAX_TEXT_CHARS
    assert text_problem(odd.native_reason) is None


def test_implausible_early_prompt_counts_are_not_trusted() -> None:
    from switchboard_router.canonical import PromptUsage
    from switchboard_router.usage_estimate import plausible_prompt

    assert plausible_prompt(PromptUsage(prompt_tokens=100, cached_tokens=20))
    assert not plausible_prompt(PromptUsage(prompt_tokens=2**62))
    assert not plausible_prompt(PromptUsage(prompt_tokens=10, cached_tokens=50))
