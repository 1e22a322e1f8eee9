"""What a usage event must be before the ledger accepts it.

A ``UsageEvent`` reaches the ledger from routers (the Redis outbox, or ``RecordUsage`` when
Redis failed), and an event is trusted with money: its counts and cost are summed into the
hourly rollups that spend, budgets and invoices read, and its ``create_time`` picks the monthly
partition it is written to. So every event is checked before anything is written, and each
problem names its field (``events[3].usage.prompt_tokens``):

- ids and names (``generation_id``, ``key_id``, ``account_id``, ``model_id``, ``provider_id``,
  ``endpoint_id``, ``upstream_model``, ``native_finish_reason``): at most
  :data:`~switchboard_core.usage_bounds.MAX_TEXT_CHARS` characters, no control characters;
  ``generation_id`` and ``key_id`` required;
- counts: each within the per-generation bounds of :mod:`switchboard_core.usage_bounds`,
  and the parts consistent (cached + cache-write tokens at most the prompt, one-hour writes
  at most the writes, audio + image + video input at most the prompt, cached audio at most
  the cached and the audio input, reasoning + audio output at most the completion; web
  searches and input images bounded). The bounds are what keeps the ``bigint`` rollups from
  overflowing (the arithmetic is in that module);
- ``attempt`` below ``MAX_ATTEMPTS``; ``latency_ms`` and ``time_to_first_token_ms`` from 0
  to ``MAX_DURATION_MS``; ``finish_reason`` and ``status`` values their enums define;
  ``price_version`` not negative (0: the router did not know it);
- ``cost_usd``: a non-negative decimal string, at most ``MAX_COST_USD``, and at most the
  event's units (tokens, the request, searches, images) times ``MAX_USD_PER_TOKEN``; then the
  optional :class:`CostCheck`: the exact price of the event's endpoint applied to its usage
  (:class:`switchboard_metering.cost_check.PriceCheck`), which may also name ``endpoint_id``
  (not in the catalog) or ``price_version`` (not a price of that endpoint), or find the event
  *unsettled* (checked again later, not refused);
- ``trace_parent``: empty, or exactly a W3C traceparent
  (:func:`switchboard_core.tracing.traceparent_problem`);
- ``create_time``: required (it is part of the ledger's key) and inside the
  :class:`EventWindow`, from ``max_age`` before now (``SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS``)
  to ``max_skew`` after it (``SWITCHBOARD_LEDGER_MAX_CLOCK_SKEW_SECONDS``). The ledger never
  creates a partition outside it (:meth:`~switchboard_metering.partitions.Partitions.ensure`).

Problem messages name bounds, never the offending value: they reach logs and callers. The
one exception is the cost check's, which gives the expected cost(s) and the event's cost: by
then that is a checked decimal of at most 24 characters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_core.money import MoneyFormatError, parse_usd
from switchboard_core.tracing import traceparent_problem
from switchboard_core.usage_bounds import (
    CONTROL_CHARS,
    DEFAULT_MAX_EVENT_AGE_DAYS,
    MAX_ATTEMPTS,
    MAX_COST_USD,
    MAX_DURATION_MS,
    MAX_TEXT_CHARS,
    MAX_USD_PER_TOKEN,
    USAGE_COUNTS,
    text_problem,
    usage_problems,
)

# An event may arrive DEFAULT_MAX_EVENT_AGE_DAYS late: as long as the ledger keeps rows by
# default (a year of invoices and the month being billed). Retention is separate: an event
# older than the retention horizon but inside this window is ignored as expired (its month
# was dropped).
# How far ahead of metering's clock a router's may run.
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 300

# The five classic token counts (the ones ``UsageRow`` and the first ledger had) ...
TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
)
# ... and the finer parts and per-unit counts (migration 0006): every count of ``Usage``.
DETAIL_FIELDS = tuple(name for name in USAGE_COUNTS if name not in TOKEN_FIELDS)
COUNT_FIELDS = (*TOKEN_FIELDS, *DETAIL_FIELDS)
TEXT_FIELDS = (
    "generation_id",
    "key_id",
    "account_id",
    "model_id",
    "provider_id",
    "endpoint_id",
    "upstream_model",
    "native_finish_reason",
)
REQUIRED_FIELDS = ("generation_id", "key_id")
DURATION_FIELDS = ("latency_ms", "time_to_first_token_ms")
MAX_REPORTED_VIOLATIONS = 20

_FINISH_REASONS = frozenset(common_pb2.FinishReason.values())
_STATUSES = frozenset(metering_pb2.GenerationStatus.values())

Problem = tuple[str, str]  # (field path, what is wrong)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class EventWindow:
    """The ``create_time`` values the ledger accepts: ``[now - max_age, now + max_skew]``.

    ``clock`` is metering's wall clock; tests pass a fixed one.
    """

    max_age: timedelta = timedelta(days=DEFAULT_MAX_EVENT_AGE_DAYS)
    max_skew: timedelta = timedelta(seconds=DEFAULT_MAX_CLOCK_SKEW_SECONDS)
    clock: Callable[[], datetime] = field(default=_utc_now, compare=False)

    def bounds(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The oldest and newest accepted instants, around ``now`` (else the clock's)."""
        now = self.clock() if now is None else now
        return now - self.max_age, now + self.max_skew


@dataclass(frozen=True, slots=True)
class CostProblem:
    """What a :class:`CostCheck` found wrong: the event's field at fault (``cost_usd``, or
    ``endpoint_id`` for an endpoint the catalog does not have) and why.

    ``settled`` is False when the check cannot yet tell an honest event from a bad one: the
    router may have charged a price (or used an endpoint) that the check has not heard of
    yet, because the change reached the router first. Such an event must be checked again
    a little later (:meth:`CostCheck.wait_settled`), not refused."""

    field: str
    message: str
    settled: bool = True


class CostCheck(Protocol):
    """A check of an event's cost against what it should be: the catalog's price of its
    endpoint applied to its tokens (:class:`switchboard_metering.cost_check.PriceCheck`;
    none by default). It runs on the ingest path, thousands of times a second: the call
    must not do I/O. ``arrival`` is when the event reached metering (seconds since the
    epoch; None: now): no price change made after it can be what the router charged."""

    def __call__(
        self, event: metering_pb2.UsageEvent, cost: Decimal, /, *, arrival: float | None
    ) -> CostProblem | None: ...

    async def wait_settled(self, arrival: float) -> None:
        """Return once events that arrived at ``arrival`` can be settled, or a little
        sooner if the check's view of the prices changed (or it gave up waiting)."""
        ...


@dataclass(frozen=True, slots=True)
class EventRules:
    """Everything validation needs besides the event: the window, and the cost check."""

    window: EventWindow = field(default_factory=EventWindow)
    cost_check: CostCheck | None = None


DEFAULT_RULES = EventRules()


def check_event(
    event: metering_pb2.UsageEvent,
    path: str,
    rules: EventRules = DEFAULT_RULES,
    *,
    now: datetime | None = None,
    arrival: float | None = None,
    unsettled: list[Problem] | None = None,
) -> list[Problem]:
    """Problems with one event, each naming its field as ``<path>.<field>``; empty when the
    ledger may write it. ``now`` fixes the window (a batch is checked at one instant);
    ``arrival`` is when the event reached metering (for the cost check). The cost check's
    unsettled problems go to ``unsettled`` when given (the caller checks the event again
    later), else they count as problems."""
    problems: list[Problem] = []
    _check_text(event, path, problems)
    usage_ok = _check_usage(event.usage, path, problems)
    _check_numbers(event, path, problems)
    _check_cost(
        event,
        path,
        rules,
        problems,
        tokens_known=usage_ok,
        arrival=arrival,
        unsettled=problems if unsettled is None else unsettled,
    )
    _check_time(event, path, rules.window, rules.window.clock() if now is None else now, problems)
    return problems


def validate_events(
    events: Sequence[metering_pb2.UsageEvent],
    path: str = "events",
    rules: EventRules = DEFAULT_RULES,
    *,
    now: datetime | None = None,
    arrival: float | None = None,
    unsettled: list[Problem] | None = None,
) -> None:
    """Raise one ``InvalidArgument`` naming the bad fields (``events[3].cost_usd``), at most
    :data:`MAX_REPORTED_VIOLATIONS` of them. Unsettled cost problems go to ``unsettled`` when
    given, and are raised only along with others (the batch is refused anyway)."""
    now = rules.window.clock() if now is None else now
    problems: list[Problem] = []
    for index, event in enumerate(events):
        where = f"{path}[{index}]"
        problems.extend(
            check_event(event, where, rules, now=now, arrival=arrival, unsettled=unsettled)
        )
    if problems:
        raise InvalidArgument([*problems, *(unsettled or ())][:MAX_REPORTED_VIOLATIONS])


def _check_text(event: metering_pb2.UsageEvent, path: str, problems: list[Problem]) -> None:
    values = [getattr(event, name) for name in TEXT_FIELDS]
    # The usual case in one pass (the ingest path checks thousands of events a second).
    if (
        event.generation_id
        and event.key_id
        and max(map(len, values)) <= MAX_TEXT_CHARS
        and not CONTROL_CHARS.search("".join(values))
    ):
        return
    for name in TEXT_FIELDS:
        value: str = getattr(event, name)
        if not value:
            if name in REQUIRED_FIELDS:
                problems.append((f"{path}.{name}", "required"))
            continue
        problem = text_problem(value)
        if problem is not None:
            problems.append((f"{path}.{name}", problem))


def _check_usage(usage: common_pb2.Usage, path: str, problems: list[Problem]) -> bool:
    """Add the usage's problems; True when its counts can be trusted for the cost check."""
    found = usage_problems(**{name: getattr(usage, name) for name in COUNT_FIELDS})
    problems.extend((f"{path}.usage.{p.field}", p.message) for p in found)
    return not found


def _check_numbers(event: metering_pb2.UsageEvent, path: str, problems: list[Problem]) -> None:
    if event.attempt >= MAX_ATTEMPTS:
        problems.append((f"{path}.attempt", f"must be below {MAX_ATTEMPTS}"))
    for name in DURATION_FIELDS:
        value: int = getattr(event, name)
        if value < 0:
            problems.append((f"{path}.{name}", "must not be negative"))
        elif value > MAX_DURATION_MS:
            problems.append((f"{path}.{name}", f"must be at most {MAX_DURATION_MS} (a day)"))
    if event.finish_reason not in _FINISH_REASONS:
        problems.append((f"{path}.finish_reason", "not a known FinishReason"))
    if event.status not in _STATUSES:
        problems.append((f"{path}.status", "not a known GenerationStatus"))
    if event.price_version < 0:
        problems.append((f"{path}.price_version", "must not be negative (0: unknown)"))
    if event.trace_parent:
        problem = traceparent_problem(event.trace_parent)
        if problem is not None:
            problems.append((f"{path}.trace_parent", problem))


def _check_cost(
    event: metering_pb2.UsageEvent,
    path: str,
    rules: EventRules,
    problems: list[Problem],
    *,
    tokens_known: bool,
    arrival: float | None,
    unsettled: list[Problem],
) -> None:
    where = f"{path}.cost_usd"
    try:
        cost = parse_usd(event.cost_usd)
    except MoneyFormatError:
        problems.append((where, "expected a non-negative decimal string like '0.15'"))
        return
    if cost > MAX_COST_USD:
        problems.append((where, f"must be at most {MAX_COST_USD} per generation"))
        return
    if not tokens_known:
        return  # the token counts are wrong already: no bound to compare with
    usage = event.usage
    # Fees count as units too (a request, a search, an image): no fee published comes near
    # the bound, and a request that spent no token may still owe its request fee.
    units = usage.prompt_tokens + usage.completion_tokens
    units += 1 + usage.web_searches + usage.input_images
    if cost > units * MAX_USD_PER_TOKEN:
        problems.append(
            (where, f"must be at most {MAX_USD_PER_TOKEN} USD per token, request, search or image")
        )
        return
    # The price depends on when: an undated event is refused for its create_time alone.
    if rules.cost_check is not None and event.HasField("create_time"):
        found = rules.cost_check(event, cost, arrival=arrival)
        if found is not None:
            problem = (f"{path}.{found.field}", found.message)
            (problems if found.settled else unsettled).append(problem)


@functools.lru_cache(maxsize=16)
def _window_ns(window: EventWindow, now: datetime) -> tuple[int, int]:
    """The window's bounds in nanoseconds since the epoch (a batch computes them once)."""
    oldest, newest = window.bounds(now)
    return (oldest - _EPOCH) // _MICROSECOND * 1000, (newest - _EPOCH) // _MICROSECOND * 1000


def _check_time(
    event: metering_pb2.UsageEvent,
    path: str,
    window: EventWindow,
    now: datetime,
    problems: list[Problem],
) -> None:
    where = f"{path}.create_time"
    if not event.HasField("create_time"):
        problems.append((where, "required: it is part of the ledger's key"))
        return
    stamp = event.create_time
    if not 0 <= stamp.nanos < 1_000_000_000:
        problems.append((where, "not a valid timestamp"))
        return
    # Integers: exact, and no datetime for an instant that may not be one (year 0 or 10000).
    created = stamp.seconds * 1_000_000_000 + stamp.nanos
    oldest_ns, newest_ns = _window_ns(window, now)
    if oldest_ns <= created <= newest_ns:
        return
    oldest, newest = window.bounds(now)
    if created < oldest_ns:
        problems.append((where, f"older than the oldest accepted ({oldest:%Y-%m-%dT%H:%MZ})"))
    else:
        problems.append((where, f"in the future (the newest accepted is {newest:%Y-%m-%dT%H:%MZ})"))
