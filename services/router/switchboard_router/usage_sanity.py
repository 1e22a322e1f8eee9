"""A provider's usage report, checked before the relay trusts it.

The report decides what the client is told it spent, what its budget is charged and what the
ledger records, so a report no honest generation could produce is not taken as sent:

- **negative counts, or counts over the per-generation bounds** of
  :mod:`switchboard_core.usage_bounds` (which metering enforces too): replaced by the relay's
  own estimate, as when a provider reports nothing, and marked ``estimated``;
- **more completion tokens than the generation could have produced** (below): replaced
  likewise;
- **parts that do not add up** (cached + cache-write tokens over the prompt, reasoning over
  the completion): the parts are clamped the way the cost formula already clamps them
  (:meth:`switchboard_core.money.Price.cost`), so the cost stays what the provider's totals
  make it and the ledger accepts the row. The totals are the provider's, so the report is not
  marked estimated.

Each case counts in ``switchboard_router_usage_reports_distrusted_total`` by provider and
reason, and logs a warning carrying ids only.

**What the generation could have produced.** Visible output is bounded by what was streamed:
every token is at least one UTF-8 byte and a character at most four bytes, so the streamed
characters (answer, streamed reasoning and tool calls alike: ``text_chars``) account for at
most four tokens each. Hidden reasoning, which some providers bill as completion without
streaming it (OpenAI's reasoning models, Anthropic's redacted thinking), can be large with
little visible text; what bounds it is the completion budget the provider was given, which
includes reasoning: the larger of the request's ``max_tokens`` (when the endpoint honours it)
and the endpoint's output cap from the catalog. A report is implausible when its completion
exceeds ``4 x streamed characters + budget + COMPLETION_MARGIN_TOKENS``. With no budget known
only the global bound applies: better an inflated report let through (metering's price check
is the next line) than an honest one replaced.
"""

from __future__ import annotations

import logging
from typing import Protocol

from switchboard_core.usage_bounds import (
    CONTROL_CHARS,
    INCONSISTENT_PARTS,
    MAX_COMPLETION_TOKENS,
    MAX_PROMPT_TOKENS,
    MAX_TEXT_CHARS,
    usage_problems,
)
from switchboard_router import metrics
from switchboard_router.canonical import CompletionRequest, FinishEvent, PromptUsage, UsageReport
from switchboard_router.catalog_cache import Route
from switchboard_router.usage_estimate import estimate_prompt_tokens, estimate_tokens

log = logging.getLogger(__name__)

# Tokens the most compact output spends per streamed character (a token is at least a byte,
# a character at most four UTF-8 bytes).
MAX_TOKENS_PER_CHAR = 4
# Tokens a completion may hold beyond its text and budget: role framing, stop and tool-call
# delimiters, special tokens.
COMPLETION_MARGIN_TOKENS = 1024
# The reasons (metric label values) besides usage_bounds' negative, over_bound and
# inconsistent_parts.
EXCEEDS_STREAM = "exceeds_stream"


class GenerationView(Protocol):
    """What the check reads of a generation (``generation.Generation`` provides it)."""

    @property
    def id(self) -> str: ...
    @property
    def request(self) -> CompletionRequest: ...
    @property
    def route(self) -> Route: ...
    @property
    def text_chars(self) -> int: ...
    @property
    def prompt(self) -> PromptUsage | None: ...


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


def completion_ceiling(streamed_chars: int, budget: int | None) -> int:
    """The most completion tokens an honest report can claim for this stream."""
    if budget is None:
        return MAX_COMPLETION_TOKENS
    ceiling = MAX_TOKENS_PER_CHAR * streamed_chars + budget + COMPLETION_MARGIN_TOKENS
    return min(ceiling, MAX_COMPLETION_TOKENS)


def distrust_reason(report: UsageReport, streamed_chars: int, budget: int | None) -> str | None:
    """Why ``report`` cannot be taken as sent (a bounded reason), or None."""
    problems = usage_problems(
        report.prompt_tokens,
        report.completion_tokens,
        report.cached_tokens,
        report.reasoning_tokens,
        report.cache_write_tokens,
    )
    bounds = [p.reason for p in problems if p.reason != INCONSISTENT_PARTS]
    if bounds:
        return bounds[0]
    if report.completion_tokens > completion_ceiling(streamed_chars, budget):
        return EXCEEDS_STREAM
    return INCONSISTENT_PARTS if problems else None


def plausible_prompt(prompt: PromptUsage) -> bool:
    """Whether the prompt counts a provider sent early are within bounds and add up."""
    return not usage_problems(
        prompt.prompt_tokens, 0, prompt.cached_tokens, 0, prompt.cache_write_tokens
    )


def clamped(report: UsageReport) -> UsageReport:
    """``report`` with its parts cut to fit its totals, as ``Price.cost`` counts them."""
    cached = min(report.cached_tokens, report.prompt_tokens)
    return UsageReport(
        prompt_tokens=report.prompt_tokens,
        completion_tokens=report.completion_tokens,
        cached_tokens=cached,
        reasoning_tokens=min(report.reasoning_tokens, report.completion_tokens),
        cache_write_tokens=min(report.cache_write_tokens, report.prompt_tokens - cached),
        estimated=report.estimated,
    )


def relay_estimate(generation: GenerationView) -> UsageReport:
    """What the relay bills when a provider reports nothing (``Generation.final_usage``):
    the prompt's early exact counts when they are plausible, else an estimate of the prompt;
    about four streamed characters a completion token. Within the bounds, marked estimated."""
    completion = min(estimate_tokens(generation.text_chars), MAX_COMPLETION_TOKENS)
    prompt = generation.prompt
    if prompt is not None and plausible_prompt(prompt):
        return UsageReport(
            prompt_tokens=prompt.prompt_tokens,
            completion_tokens=completion,
            cached_tokens=prompt.cached_tokens,
            cache_write_tokens=prompt.cache_write_tokens,
            estimated=True,
        )
    return UsageReport(
        prompt_tokens=min(estimate_prompt_tokens(generation.request), MAX_PROMPT_TOKENS),
        completion_tokens=completion,
        estimated=True,
    )


def checked_usage(report: UsageReport, generation: GenerationView) -> UsageReport:
    """``report`` when plausible; else its parts clamped, or the relay's estimate (see the
    module docstring), counted and logged."""
    budget = completion_budget(generation.request, generation.route)
    reason = distrust_reason(report, generation.text_chars, budget)
    if reason is None:
        return report
    provider = generation.route.provider_id
    metrics.USAGE_REPORTS_DISTRUSTED.labels(provider, reason).inc()
    log.warning(
        "provider usage report not trusted",
        extra={
            "generation_id": generation.id,
            "provider": provider,
            "endpoint": generation.route.endpoint_id,
            "reason": reason,
        },
    )
    return clamped(report) if reason == INCONSISTENT_PARTS else relay_estimate(generation)


def clean_finish(event: FinishEvent) -> FinishEvent:
    """``event`` with the provider's own finish reason fit for the ledger: control characters
    removed and at most ``MAX_TEXT_CHARS`` long (metering refuses an event otherwise)."""
    native = event.native_reason
    if len(native) <= MAX_TEXT_CHARS and not CONTROL_CHARS.search(native):
        return event
    return FinishEvent(event.reason, CONTROL_CHARS.sub("", native)[:MAX_TEXT_CHARS], event.choice)
