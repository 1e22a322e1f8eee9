"""A provider's usage report, checked before the relay trusts it.

The report decides what the client is told it spent, what its budget is charged and what the
ledger records, so a report no honest generation could produce is not taken as sent:

- **negative counts, or counts over the per-generation bounds** of
  :mod:`switchboard_core.usage_bounds` (which metering enforces too): replaced by the relay's
  own estimate, as when a provider reports nothing, and marked ``estimated``;
- **more completion tokens than the generation could have produced** (below): replaced
  likewise;
- **parts that do not add up** (cached + cache-write tokens over the prompt, reasoning over
  the completion): the parts are clamped the way the cost engine already clamps them
  (:meth:`switchboard_core.pricing.PriceSheet.cost`: cached first, then cache writes, the
  hour-long ones within them; of the fresh prompt, audio, image, video; of the completion,
  reasoning, then audio), so the cost stays what the provider's totals make it and the ledger
  accepts the row. The totals are the provider's, so the report is not marked estimated.

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

**Running counts** (an adapter's ``UsageReport`` marked estimated, before the final one) only
ever serve as a floor for the estimate of a generation cut short; one that fails the same
checks is dropped (:func:`checked_running`), counted with the same reasons.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from switchboard_core.usage_bounds import (
    CONTROL_CHARS,
    INCONSISTENT_PARTS,
    MAX_COMPLETION_TOKENS,
    MAX_TEXT_CHARS,
    UsageProblem,
    usage_problems,
)
from switchboard_router import metrics
from switchboard_router.canonical import FinishEvent, UsageReport
from switchboard_router.usage_estimate import StreamView, completion_budget, estimated_usage

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


class GenerationView(StreamView, Protocol):
    """What the check reads of a generation (``generation.Generation`` provides it)."""

    @property
    def id(self) -> str: ...


def completion_ceiling(streamed_chars: int, budget: int | None) -> int:
    """The most completion tokens an honest report can claim for this stream."""
    if budget is None:
        return MAX_COMPLETION_TOKENS
    ceiling = MAX_TOKENS_PER_CHAR * streamed_chars + budget + COMPLETION_MARGIN_TOKENS
    return min(ceiling, MAX_COMPLETION_TOKENS)


def distrust_reason(report: UsageReport, streamed_chars: int, budget: int | None) -> str | None:
    """Why ``report`` cannot be taken as sent (a bounded reason), or None."""
    problems = report_problems(report)
    bounds = [p.reason for p in problems if p.reason != INCONSISTENT_PARTS]
    if bounds:
        return bounds[0]
    if report.completion_tokens > completion_ceiling(streamed_chars, budget):
        return EXCEEDS_STREAM
    return INCONSISTENT_PARTS if problems else None


def report_problems(report: UsageReport) -> list[UsageProblem]:
    """What metering would find wrong with ``report`` (``usage_bounds.usage_problems``)."""
    return usage_problems(
        report.prompt_tokens,
        report.completion_tokens,
        report.cached_tokens,
        report.reasoning_tokens,
        report.cache_write_tokens,
        cache_write_1h_tokens=report.cache_write_1h_tokens,
        audio_prompt_tokens=report.audio_prompt_tokens,
        image_prompt_tokens=report.image_prompt_tokens,
        video_prompt_tokens=report.video_prompt_tokens,
        cached_audio_tokens=report.cached_audio_tokens,
        audio_completion_tokens=report.audio_completion_tokens,
        web_searches=report.web_searches,
    )


def clamped(report: UsageReport) -> UsageReport:
    """``report`` with its parts cut to fit its totals, as ``PriceSheet.cost`` counts them."""
    prompt, completion = report.prompt_tokens, report.completion_tokens
    cached = min(report.cached_tokens, prompt)
    written = min(report.cache_write_tokens, prompt - cached)
    fresh = prompt - cached - written
    cached_audio = min(report.cached_audio_tokens, cached)
    audio = min(max(report.audio_prompt_tokens - cached_audio, 0), fresh)
    image = min(report.image_prompt_tokens, fresh - audio)
    video = min(report.video_prompt_tokens, fresh - audio - image)
    reasoning = min(report.reasoning_tokens, completion)
    return UsageReport(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        cache_write_tokens=written,
        estimated=report.estimated,
        cache_write_1h_tokens=min(report.cache_write_1h_tokens, written),
        audio_prompt_tokens=audio + cached_audio,
        image_prompt_tokens=image,
        video_prompt_tokens=video,
        cached_audio_tokens=cached_audio,
        audio_completion_tokens=min(report.audio_completion_tokens, completion - reasoning),
        web_searches=report.web_searches,
    )


def relay_estimate(generation: GenerationView) -> UsageReport:
    """What the relay bills when a provider's report cannot be used: the estimate of a
    generation cut short now (:func:`~.usage_estimate.estimated_usage`), marked estimated."""
    return estimated_usage(generation, time.monotonic())


def _distrusted(generation: GenerationView, reason: str, what: str) -> None:
    provider = generation.route.provider_id
    metrics.USAGE_REPORTS_DISTRUSTED.labels(provider, reason).inc()
    log.warning(
        what,
        extra={
            "generation_id": generation.id,
            "provider": provider,
            "endpoint": generation.route.endpoint_id,
            "reason": reason,
        },
    )


def checked_running(report: UsageReport, generation: GenerationView) -> UsageReport | None:
    """Running counts fit to serve as a floor: ``report`` (parts clamped when they do not add
    up), or None when no honest stream could have sent them."""
    budget = completion_budget(generation.request, generation.route)
    reason = distrust_reason(report, generation.text_chars, budget)
    if reason is None:
        return report
    _distrusted(generation, reason, "provider running usage not trusted")
    return clamped(report) if reason == INCONSISTENT_PARTS else None


def checked_usage(report: UsageReport, generation: GenerationView) -> UsageReport:
    """``report`` when plausible; else its parts clamped, or the relay's estimate (see the
    module docstring), counted and logged."""
    budget = completion_budget(generation.request, generation.route)
    reason = distrust_reason(report, generation.text_chars, budget)
    if reason is None:
        return report
    _distrusted(generation, reason, "provider usage report not trusted")
    return clamped(report) if reason == INCONSISTENT_PARTS else relay_estimate(generation)


def clean_finish(event: FinishEvent) -> FinishEvent:
    """``event`` with the provider's own finish reason fit for the ledger: control characters
    removed and at most ``MAX_TEXT_CHARS`` long (metering refuses an event otherwise)."""
    native = event.native_reason
    if len(native) <= MAX_TEXT_CHARS and not CONTROL_CHARS.search(native):
        return event
    return FinishEvent(event.reason, CONTROL_CHARS.sub("", native)[:MAX_TEXT_CHARS], event.choice)
