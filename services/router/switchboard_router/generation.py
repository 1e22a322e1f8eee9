"""One generation: what it has produced so far, its usage and its cost.

The relay (:mod:`.relay`) fills a :class:`Generation` as events arrive; :mod:`.inflight`
reads it to record a generation whose router dies before it ends. Its ledger event is built
by :func:`.usage_sink.usage_event`: the metering wire format has one room, the usage sink.

The cost is the endpoint's :class:`~switchboard_core.pricing.PriceSheet` applied to the usage
at the generation's ``create_time`` (:func:`cost_of`): the time window and prompt tier in force
then, every part the provider reported (cache reads and writes by duration, input by modality,
audio output, reasoning, web searches), and the request's images for a price per image. The
ledger event names the price version that billed it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from switchboard_core.budget import Reservation
from switchboard_core.pricing import Counts
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CompletionRequest,
    FinishEvent,
    PromptUsage,
    ReasoningDelta,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.usage_estimate import estimated_usage, image_count


def new_generation_id() -> str:
    return f"gen-{int(time.time() * 1000):x}{secrets.token_hex(10)}"


@dataclass
class Hold:
    """A request's budget reservation, settled once to the sum of what its attempts cost.

    A request may meter more than one attempt: the generation it served and, with hedging,
    the attempt that lost the race (each its own ledger row). Each metered attempt is
    expected (:meth:`expect`) before its cost is known, and added when it is (:meth:`add`,
    often in the background: a cut stream is counted with the tokenizer); once the request
    can start no more attempts (:meth:`close`) and nothing is still expected, the hold is
    due: settled to ``spent``, the sum of the ledger rows the request wrote."""

    reservation: Reservation
    settled: bool = False
    spent: Decimal = Decimal(0)  # the costs of the attempts metered so far
    pending: int = 0  # attempts expected whose cost is not known yet
    closed: bool = False  # the request starts no more attempts

    def expect(self) -> None:
        self.pending += 1

    def add(self, cost: Decimal) -> bool:
        """An expected attempt cost ``cost``; whether the hold is now due."""
        self.spent += cost
        self.pending -= 1
        return self._due()

    def close(self) -> bool:
        """No attempt will start any more; whether the hold is now due."""
        self.closed = True
        return self._due()

    def _due(self) -> bool:
        if self.settled or not self.closed or self.pending > 0:
            return False
        self.settled = True
        return True


@dataclass
class Generation:
    """What one generation has produced so far."""

    id: str
    attempt: int  # upstream tries before this one
    caller: Caller
    request: CompletionRequest
    route: Route
    started: float  # monotonic: the request arrived
    create_time: float  # wall clock: prices are those in force then
    streamed: bool
    first_event_at: float = 0.0
    text_chars: int = 0  # streamed characters: text, reasoning, tool calls, refusals
    usage: UsageReport | None = None  # the provider's final usage (checked)
    reasoning_chars: int = 0  # of text_chars: streamed reasoning
    sent_at: float = 0.0  # monotonic: this attempt's request went upstream (0: unknown)
    visible_at: float = 0.0  # monotonic: the first visible output (text, call, refusal)
    running: UsageReport | None = None  # the provider's running counts so far (a floor)
    hold: Hold | None = None  # the request's budget reservation, settled once
    prompt: PromptUsage | None = None  # the prompt's exact counts, when sent early
    finishes: dict[int, FinishEvent] = field(default_factory=dict)  # by choice
    # Reasoning pieces that must go back to the provider, by choice (see reasoning_blocks).
    signed: dict[int, list[ReasoningDelta]] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    # The streamed output, for the tokenizer should the stream be cut (usage_estimate.cut_usage):
    # text, tool calls and refusals; and reasoning.
    visible_texts: list[str] = field(default_factory=list)
    reasoning_texts: list[str] = field(default_factory=list)
    # The W3C traceparent of the request's completion span (switchboard_core.tracing): the
    # usage event carries it, so metering's ledger write joins the request's trace.
    trace_parent: str = ""

    @property
    def hides_reasoning(self) -> bool:
        """The request asked for reasoning without its text (``reasoning.exclude``)."""
        return self.request.reasoning is not None and self.request.reasoning.exclude

    def final_usage(self, now: float | None = None) -> UsageReport:
        """The provider's usage; else (no usage reported, or the stream cut short at ``now``,
        monotonic) the estimate of :func:`~.usage_estimate.estimated_usage`: the provider's
        early and running counts where it sent them, hidden reasoning allowed for, marked
        estimated."""
        if self.usage is not None:
            return self.usage
        return estimated_usage(self, time.monotonic() if now is None else now)

    def cost(self, usage: UsageReport) -> Decimal:
        """What ``usage`` costs on this generation's endpoint at its create_time."""
        return cost_of(self.route, usage, at=self.create_time, images=image_count(self.request))


def counts_of(usage: UsageReport, images: int = 0) -> Counts:
    """``usage`` in the cost engine's terms (the same counts as ``Counts.of`` of its event)."""
    return Counts.reported(usage, images)


def cost_of(
    route: Route, usage: UsageReport, *, at: float | datetime | None = None, images: int = 0
) -> Decimal:
    """The exact cost of ``usage`` on ``route`` under the price in force ``at`` (a wall-clock
    time, seconds or datetime; None prices outside any time window), with ``images`` input
    images for a price per image."""
    sheet = route.price
    when: datetime | None = None
    if sheet.windows:  # only a time window reads the time: other sheets skip the datetime
        when = datetime.fromtimestamp(at, UTC) if isinstance(at, int | float) else at
    return sheet.cost(counts_of(usage, images), when)
