"""The exact price check of every usage event (the ledger's ``CostCheck``).

An event's ``cost_usd`` must equal ``sheet.cost(Counts.of(usage), at=create_time)``
(:class:`switchboard_core.pricing.PriceSheet`: every rate by token type and modality, tiers
by prompt length, time-of-day windows, per-request, per-image and per-search fees; exactly
what the router computes) for the sheet the router billed with:

- when the event names a ``price_version`` and its endpoint's history carries versions, the
  sheet of that version. The version must be one of the event's endpoint's prices and one in
  force during the window below; otherwise ``price_version`` is refused: at once when the
  book shows it is another endpoint's price (versions are the catalog's ids, unique across
  endpoints: no later snapshot can make it this endpoint's) or a price of the endpoint that
  was not in force then (effective times never move), and by the rule below when the book
  does not know the version at all (it may be a price change on its way to metering);
- else (``price_version`` 0: a router that does not send it, or a catalog that sends no
  versions), SOME price its endpoint had during ``[create_time - lag - skew,
  create_time + skew]``.

The window's bounds:

- the router prices a generation with the catalog snapshot it routed the request with, taken
  when the request started: up to its deadline before ``create_time`` (the first token), and
  that snapshot may lag the catalog (propagation, or much longer while the router is cut off
  from it). ``lag`` covers both: ``SWITCHBOARD_MAX_REQUEST_SECONDS`` (the routers' setting,
  600 s) plus ``SWITCHBOARD_LEDGER_PRICE_LAG_SECONDS`` (3,600 s);
- ``create_time`` is the router's clock and a price's ``effective_time`` the catalog
  database's: ``skew`` (``SWITCHBOARD_LEDGER_MAX_CLOCK_SKEW_SECONDS``) either way.

So an honest event priced at a price the catalog has since changed is accepted: the window
follows ``create_time``, which the router fixes once per generation, however long the event
then waits (the outbox, a metering restart: the whole history comes with the first
snapshot). Cancelled and failed generations are priced the same way, on their estimated
usage, by the router and by its in-flight record that metering's sweep replays
(:mod:`switchboard_metering.sweeper`): the same rule holds for them.

The verdict, per event:

1. **No view** (no :class:`~switchboard_metering.prices.PriceBook`: the catalog unreachable
   since metering started, or sending no history): accepted, counted in
   ``switchboard_usage_cost_unverified_total{reason="no_view"}``, a warning at most once a
   minute. Availability first: the ledger is the record of what clients were already told
   and charged (budgets settle in the routers); refusing or holding every event because the
   catalog is down would lose or delay that record, to guard against a router forging costs.
2. **A price matches**: accepted. **A price version that cannot be** (another endpoint's,
   or one not in force around ``create_time``): refused, whatever the view's age.
3. **No match** (or an endpoint the catalog does not have, or a price version the book does
   not know): refused, naming ``cost_usd`` (the expected cost(s) and the given one),
   ``endpoint_id`` or ``price_version``, provided the view *vouches
   for the event's arrival*: it held every catalog change made before the event reached
   metering. That is so once the watch has been streaming for ``settle`` seconds
   (``SWITCHBOARD_LEDGER_PRICE_SETTLE_SECONDS``, the catalog's propagation allowance) after
   the arrival, or broke at least that long after it.
4. Else, if the watch is streaming: **unsettled**. The router may have charged a change that
   reached it before metering (a price change, a new endpoint): the outbox leaves the entry
   pending and checks it again when it claims it (about 30 s later); ``RecordUsage`` waits
   (:meth:`PriceCheck.wait_settled`, at most ``settle`` seconds) and checks again.
5. Else (the watch broke before the event arrived, or too soon after): accepted,
   ``reason="view_stale"``, as in 1: metering cannot know the prices set since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import Counter

from switchboard.metering.v1 import metering_pb2
from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts
from switchboard_metering.event_rules import CostProblem
from switchboard_metering.prices import EndpointPrices, PriceBook, PriceWatch

log = logging.getLogger(__name__)

DEFAULT_PRICE_LAG_SECONDS = 3600
DEFAULT_PRICE_SETTLE_SECONDS = 10.0
WARN_EVERY_SECONDS = 60.0
# At most this many expected costs are named in a refusal.
MAX_NAMED_COSTS = 3

COST_UNVERIFIED = Counter(
    "switchboard_usage_cost_unverified_total",
    "Usage events accepted without the exact price check, by reason: no_view (metering has"
    " no view of the catalog's prices) or view_stale (its watch of the catalog was down when"
    " the event arrived, and the cost matched no price it knew).",
    ["reason"],
)
NO_VIEW, VIEW_STALE = "no_view", "view_stale"
for _reason in (NO_VIEW, VIEW_STALE):  # export zeros
    COST_UNVERIFIED.labels(_reason)

_NS = 1_000_000_000
OTHER_ENDPOINTS_VERSION = "a price version of another endpoint, not of the event's endpoint_id"
UNKNOWN_VERSION = "not a price version of the event's endpoint in the catalog"
VERSION_NOT_IN_FORCE = "the endpoint's price of that version was not in force around create_time"


def created_at(event: metering_pb2.UsageEvent) -> datetime | None:
    """The event's ``create_time`` as a UTC datetime; None when it is not one (year 0 or
    10000: the event is refused for its ``create_time``, and no window can apply)."""
    try:
        return event.create_time.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def expected_cost(prices: EndpointPrices, index: int, event: metering_pb2.UsageEvent) -> Decimal:
    """The cost of ``event``'s usage under the endpoint's price ``index``, at its
    create_time."""
    return prices.sheets[index].cost(Counts.of(event.usage), at=created_at(event))


def price_label(prices: EndpointPrices, index: int) -> str:
    """How a refusal or a reconcile report names a price: its version (when the catalog
    gave one) and when it took effect."""
    since = f"{prices.effective_at(index):%Y-%m-%dT%H:%M:%SZ}"
    version = prices.version_of(index)
    return f"price version {version} of {since}" if version else f"price of {since}"


class PriceCheck:
    """The :class:`~switchboard_metering.event_rules.CostCheck` against ``watch``'s prices.

    ``lag``, ``skew`` and ``settle`` are seconds (see the module docstring); ``clock`` is the
    wall clock (seconds since the epoch) that arrivals are measured in.
    """

    def __init__(
        self,
        watch: PriceWatch,
        *,
        lag: float,
        skew: float,
        settle: float = DEFAULT_PRICE_SETTLE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._watch = watch
        self._before_ns = int((lag + skew) * _NS)
        self._after_ns = int(skew * _NS)
        self.settle = settle
        self._clock = clock
        self._warned_at = -WARN_EVERY_SECONDS
        self._unwarned = 0

    def __call__(
        self, event: metering_pb2.UsageEvent, cost: Decimal, /, *, arrival: float | None
    ) -> CostProblem | None:
        book = self._watch.book
        if book is None:
            self._unverified(NO_VIEW)
            return None
        found = self._problem(event, cost, book)
        if found is None or found.settled:
            return found
        now = self._clock()
        if self._vouches_for(now if arrival is None else min(arrival, now), now):
            return CostProblem(found.field, found.message)
        if self._watch.streaming:
            return found
        self._unverified(VIEW_STALE)
        return None

    async def wait_settled(self, arrival: float) -> None:
        """Return when the view vouches for ``arrival`` (``settle`` seconds after it, while
        the watch streams) or sooner, when a new book comes in."""
        remaining = arrival + self.settle - self._clock()
        if remaining > 0:
            await self._watch.changed(remaining)

    def _problem(
        self, event: metering_pb2.UsageEvent, cost: Decimal, book: PriceBook
    ) -> CostProblem | None:
        """What is wrong with the event's cost under ``book``: settled when no later book
        can change the verdict, else unsettled (the caller decides by the view's age)."""
        prices = book.endpoints.get(event.endpoint_id)
        if prices is None:
            return CostProblem("endpoint_id", "not an endpoint of the catalog", settled=False)
        stamp = event.create_time
        created = stamp.seconds * _NS + stamp.nanos
        candidates = prices.during(created - self._before_ns, created + self._after_ns)
        version = event.price_version
        if version and prices.by_version:
            index = prices.by_version.get(version)
            if index is None:
                if book.version_owners.get(version, event.endpoint_id) != event.endpoint_id:
                    return CostProblem("price_version", OTHER_ENDPOINTS_VERSION)
                return CostProblem("price_version", UNKNOWN_VERSION, settled=False)
            if index not in candidates:
                return CostProblem("price_version", VERSION_NOT_IN_FORCE)
            candidates = range(index, index + 1)
        mismatch = self._mismatch(event, cost, prices, candidates)
        return None if mismatch is None else CostProblem("cost_usd", mismatch, settled=False)

    @staticmethod
    def _mismatch(
        event: metering_pb2.UsageEvent, cost: Decimal, prices: EndpointPrices, candidates: range
    ) -> str | None:
        """Why ``cost`` is none of the ``candidates`` prices applied to the usage; None when
        it is one."""
        expected: dict[Decimal, int] = {}
        for index in candidates:
            due = expected_cost(prices, index, event)
            if due == cost:
                return None
            expected.setdefault(due, index)
        given = format_usd(cost)
        if not expected:
            return f"the endpoint had no price around create_time; got {given}"
        named = ", ".join(
            f"{format_usd(due)} ({price_label(prices, index)})"
            for due, index in list(expected.items())[-MAX_NAMED_COSTS:]
        )
        one = "" if len(expected) == 1 else "one of "
        return f"must be the endpoint's price for the usage: expected {one}{named}; got {given}"

    def _vouches_for(self, arrival: float, now: float) -> bool:
        """Whether the view held every catalog change made before ``arrival``."""
        watch = self._watch
        if watch.streaming:
            return arrival <= now - self.settle
        return watch.broken_at is not None and arrival <= watch.broken_at - self.settle

    def _unverified(self, reason: str) -> None:
        COST_UNVERIFIED.labels(reason).inc()
        self._unwarned += 1
        now = self._clock()
        if now - self._warned_at < WARN_EVERY_SECONDS:
            return
        log.warning(
            "usage costs accepted unverified: no current view of the catalog's prices",
            extra={"reason": reason, "events": self._unwarned},
        )
        self._warned_at, self._unwarned = now, 0
