"""What a request's attempts cost, recorded: their usage events and the settle of the request's
reservation, written in the background so that a client who leaves cannot cut them short.

**Every attempt that consumed something is a ledger row.** The generation the client was
served (completed, or cut short: the client left, the upstream failed midway) and, with
hedging, an attempt abandoned before it won: the hedge's loser, or any attempt in flight when
the client left during the race (:mod:`.attempts`).

**An abandoned attempt is metered as a stream cut at that moment is**
(:func:`.usage_estimate.cut_usage`), status ``CANCELLED``, finish ``CANCELLED``, dated when it
was sent (the prices in force then), under its own generation id (:func:`lost_generation_id`):

- *prompt*: the provider's own counts when it sent them before losing (Anthropic's
  ``message_start``, Gemini's running usage), else the prompt estimate cut streams use (the
  model's tokenizer where one runs here, else about four characters a token);
- *completion*: what it streamed (nothing, unless it answered in the same instant as the
  winner, or the provider's running counts said more), plus, only for a request that asked for
  reasoning, the hidden-reasoning allowance the wait itself proves (20 tokens a second beyond a
  generous prefill time: 0 for a loser cancelled within a second or so of being sent).

It is billed because the provider bills it: the request was sent and the prompt read. It is
not a failure of its endpoint (nobody tells the breaker), and it is not recorded as in flight
(it is metered the moment it loses; should the router die mid-race, no attempt was recorded,
as for any attempt before its first token).

**The reservation settles to the sum of the rows** (:class:`.generation.Hold`): each metered
attempt is expected before its cost is known and charged when it is (an abandoned attempt's
is counted off the event loop), and the hold settles once the request starts no more attempts
and nothing is still expected. So the client pays exactly what the ledger records, hedged or
not. A completed generation whose event could not be recorded anywhere is not billed (its
cost is charged 0, as the client is told ``USAGE_NOT_RECORDED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from decimal import Decimal

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import Unavailable
from switchboard_router import metrics
from switchboard_router.admission import Admission
from switchboard_router.attempts import Leg
from switchboard_router.canonical import (
    AdapterEvent,
    Finish,
    FinishEvent,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from switchboard_router.generation import Generation, Hold
from switchboard_router.usage_estimate import cut_usage
from switchboard_router.usage_sanity import checked_running
from switchboard_router.usage_sink import (
    CANCELLED,
    STATUS_NAMES,
    Status,
    UsageSink,
    usage_event,
)

log = logging.getLogger(__name__)

# How long shutdown waits for budget settles once the usage events are written.
SETTLE_DRAIN_SECONDS = 1.0


class Billing:
    """The usage writes and settles of every request, as tasks it tracks (see the module)."""

    def __init__(self, sink: UsageSink, admission: Admission) -> None:
        self._sink = sink
        self._admission = admission
        self._background: set[asyncio.Task[None]] = set()
        self._settles: set[asyncio.Task[None]] = set()

    async def completed(
        self, generation: Generation, event: metering_pb2.UsageEvent, cost: Decimal
    ) -> None:
        """Write a completed generation's event, then charge its cost to the request's hold;
        an event that could not be recorded is not billed (charged 0)."""
        try:
            await self._sink.publish(event)
        except BaseException:
            self.charge(generation.hold, Decimal(0))
            raise
        self.charge(generation.hold, cost)

    def cut_short(self, generation: Generation, status: Status) -> None:
        """Meter a generation that did not finish, in the background: a cancelled task does
        not wait, and its output is counted with the model's tokenizer off the event loop
        (:func:`.usage_estimate.cut_usage`)."""
        self.spawn(self._meter_cut(generation, status, time.monotonic()))

    def lost(self, generation: Generation, leg: Leg) -> None:
        """Meter an attempt abandoned before it won (see the module docstring); ``generation``
        names it (:func:`lost_generation_id`), ``leg`` is what it said before it lost."""
        if leg.running is not None:
            generation.running = checked_running(leg.running, generation)
        if leg.first is not None:  # it answered too, a moment late: what it sent is counted
            absorb(generation, leg.first)
        if generation.hold is not None:
            generation.hold.expect()
        self.spawn(self._meter_cut(generation, CANCELLED, time.monotonic(), lost=True))

    async def _meter_cut(
        self, generation: Generation, status: Status, now: float, *, lost: bool = False
    ) -> None:
        try:
            usage = await cut_usage(generation, now)
        except BaseException:
            self.charge(generation.hold, Decimal(0))  # nothing recorded: nothing charged
            raise
        reason = Finish.CANCELLED if status == CANCELLED else Finish.ERROR
        cost = generation.cost(usage)
        event = usage_event(generation, status, usage, cost, FinishEvent(reason, ""))
        count(generation, status, usage, lost=lost)
        self.charge(generation.hold, cost)
        with contextlib.suppress(Unavailable):  # the sink logged it, with the generation id
            await self._sink.publish(event)

    def charge(self, hold: Hold | None, cost: Decimal) -> None:
        """An attempt the hold expected cost ``cost``: settle once all are known."""
        if hold is not None and hold.add(cost):
            self._settle(hold)

    def close(self, hold: Hold | None) -> None:
        """The request starts no more attempts: settle if none is still being metered."""
        if hold is not None and hold.close():
            self._settle(hold)

    def _settle(self, hold: Hold) -> None:
        """Settle to the sum of the request's attempts, in the background (a cancelled request
        cannot cut it short)."""
        self.spawn(self._admission.settle(hold.reservation, hold.spent), self._settles)

    def spawn(
        self, work: Coroutine[None, None, None], tracked: set[asyncio.Task[None]] | None = None
    ) -> asyncio.Task[None]:
        """Run usage writes as tracked tasks, so a cancelled request cannot cut them."""
        tasks = self._background if tracked is None else tracked
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for usage events still being written, then give settles a moment; a settle
        still retrying then (Redis down) is dropped, and metering's sweep settles its
        reservation once this router has left (:mod:`.inflight`)."""
        if self._background:
            ended = await asyncio.gather(*self._background, return_exceptions=True)
            for outcome in ended:
                if isinstance(outcome, Exception):  # a usage write that failed as we left
                    log.error("usage write failed while draining", exc_info=outcome)
        if self._settles:
            _, late = await asyncio.wait(self._settles, timeout=SETTLE_DRAIN_SECONDS)
            for task in late:
                task.cancel()


def count(
    generation: Generation, status: Status, usage: UsageReport, *, lost: bool = False
) -> None:
    """Tokens metered, and the generation by status (an abandoned attempt is no generation
    relayed: metrics.ABANDONED_ATTEMPTS counts it)."""
    provider = generation.route.provider_id
    if not lost:
        metrics.GENERATIONS.labels(provider, STATUS_NAMES[status]).inc()
    metrics.TOKENS.labels(provider, "input").inc(usage.prompt_tokens)
    metrics.TOKENS.labels(provider, "output").inc(usage.completion_tokens)


def lost_generation_id(generation_id: str, attempt: int) -> str:
    """The ledger id of an attempt abandoned before it won: ``<the request's id>-a<attempt>``.

    Its own generation id, not the served one's with its attempt number: the ledger's key
    ``(generation_id, attempt, created_at)`` would take either, but ``GetGeneration`` answers
    with an id's *highest* attempt, so a loser sent after the winner (the hedge, when the
    first attempt won) would shadow the generation the client was served. Derived from the
    served id, the loser's row is still found from it (``generation_id LIKE '<id>-a%'``),
    keeps its attempt number (the order it was sent in), and ``GetGeneration`` of the served
    id is the served generation. When no attempt won (the client left during the race) every
    row is a loser's and the request's own id has none.
    """
    return f"{generation_id}-a{attempt}"


def absorb(generation: Generation, event: AdapterEvent) -> None:
    """Count an event a losing attempt streamed (its first, when two answered at once) toward
    what it is billed, as the relay counts a generation's."""
    if type(event) is ReasoningDelta:
        generation.text_chars += len(event.text)
        generation.reasoning_chars += len(event.text)
        generation.reasoning_texts.append(event.text)
    elif type(event) is TextDelta or type(event) is RefusalDelta:
        generation.text_chars += len(event.text)
        generation.visible_texts.append(event.text)
    elif type(event) is ToolCallDelta:
        generation.text_chars += len(event.name) + len(event.arguments)
        generation.visible_texts += (event.name, event.arguments)
