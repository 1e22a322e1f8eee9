"""One generation: what it has produced so far, its usage and cost, and its ledger event.

The relay (:mod:`.relay`) fills a :class:`Generation` as events arrive; :mod:`.inflight`
reads it to record a generation whose router dies before it ends.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from google.protobuf import timestamp_pb2

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import Reservation
from switchboard_core.money import format_usd
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CompletionRequest,
    FinishEvent,
    PromptUsage,
    ReasoningDelta,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.usage_estimate import estimate_prompt_tokens, estimate_tokens


def new_generation_id() -> str:
    return f"gen-{int(time.time() * 1000):x}{secrets.token_hex(10)}"


@dataclass
class Hold:
    """A request's budget reservation and whether it has been settled."""

    reservation: Reservation
    settled: bool = False


@dataclass
class Generation:
    """What one generation has produced so far."""

    id: str
    attempt: int  # upstream tries before this one
    caller: Caller
    request: CompletionRequest
    route: Route
    started: float  # monotonic
    create_time: float  # wall clock
    streamed: bool
    first_event_at: float = 0.0
    text_chars: int = 0
    usage: UsageReport | None = None
    hold: Hold | None = None  # the request's budget reservation, settled once
    prompt: PromptUsage | None = None  # the prompt's exact counts, when sent early
    finishes: dict[int, FinishEvent] = field(default_factory=dict)  # by choice
    # Reasoning pieces that must go back to the provider, by choice (see reasoning_blocks).
    signed: dict[int, list[ReasoningDelta]] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None

    @property
    def hides_reasoning(self) -> bool:
        """The request asked for reasoning without its text (``reasoning.exclude``)."""
        return self.request.reasoning is not None and self.request.reasoning.exclude

    def final_usage(self) -> UsageReport:
        """The provider's usage; else (no usage reported, or the stream cut short) the
        prompt's exact counts when the provider sent them early, with an estimated
        completion, marked estimated."""
        if self.usage is not None:
            return self.usage
        completion = estimate_tokens(self.text_chars)
        if self.prompt is not None:
            return UsageReport(
                prompt_tokens=self.prompt.prompt_tokens,
                completion_tokens=completion,
                cached_tokens=self.prompt.cached_tokens,
                cache_write_tokens=self.prompt.cache_write_tokens,
                estimated=True,
            )
        return UsageReport(
            prompt_tokens=estimate_prompt_tokens(self.request),
            completion_tokens=completion,
            estimated=True,
        )

    def to_event(
        self, status: int, usage: UsageReport, cost: Decimal, finish: FinishEvent
    ) -> metering_pb2.UsageEvent:
        now = time.monotonic()
        created = timestamp(self.create_time)
        return metering_pb2.UsageEvent(
            generation_id=self.id,
            attempt=self.attempt,
            key_id=self.caller.key_id,
            account_id=self.caller.account_id,
            model_id=self.route.model_id,
            provider_id=self.route.provider_id,
            endpoint_id=self.route.endpoint_id,
            upstream_model=self.route.upstream_model,
            usage=usage_message(usage),
            cost_usd=format_usd(cost),
            finish_reason=int(finish.reason),  # type: ignore[arg-type]
            native_finish_reason=finish.native_reason,
            status=status,  # type: ignore[arg-type]
            create_time=created,
            latency_ms=int((now - self.started) * 1000),
            time_to_first_token_ms=int((self.first_event_at - self.started) * 1000)
            if self.first_event_at
            else 0,
            streamed=self.streamed,
        )


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def usage_message(usage: UsageReport) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        estimated=usage.estimated,
    )


def cost_of(route: Route, usage: UsageReport) -> Decimal:
    return route.price.cost(
        usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens
    )
