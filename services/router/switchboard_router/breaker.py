"""One endpoint's circuit breaker, as one router sees it (shared through
:mod:`switchboard_router.endpoint_stats`, which owns the Redis side).

States, after the usual three-state breaker (Nygard, *Release It!*):

- **closed**: requests pass. It opens when, over ``window_seconds``, at least
  ``min_requests`` attempts were made and at least ``failure_rate`` of them failed (every
  router's counts: the shared figures plus this router's counts not written yet), or after
  ``consecutive_failures`` failures in a row seen by this router. A 429 with ``Retry-After``
  opens it for that long (at most :data:`MAX_COOLDOWN_SECONDS`): the provider said when to
  come back.
- **open**: nothing is sent (the endpoint is skipped without a network call) until the
  opening's ``until``, ``open_seconds`` after it opened (or the cool-down's end).
- **half-open**: at most ``probes`` requests pass, across routers: a router may send one only
  with a probe token, which its background task claims from a shared counter in Redis
  (:meth:`Breaker.grant_probe`) once a request wanted the endpoint; when Redis cannot be
  reached it grants itself tokens, at most ``probes`` per opening (each router then probes on
  its own: at most ``probes`` times the routers). The first answer decides: a success closes
  the breaker, a failure opens it again for ``open_seconds``. A half-open period that gets no
  verdict within ``half_open_seconds`` closes by itself (the shared key expires).

An opening is shared (:class:`Opening`, written to Redis by the router that opened it and read
back by the others within a refresh); so is a close, which deletes the opening it ended.
Failures counted before a close do not count after it: the breaker remembers the window's
counts when it closes and judges only what came after (:meth:`Breaker._counts`).

Everything here is local and quick: :meth:`Breaker.allows` runs on the request path. Time is
wall-clock seconds (``clock``), since openings are compared across routers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from switchboard_router import metrics

if TYPE_CHECKING:
    from switchboard_router.config import RouterConfig

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the breaker-state gauge's values

# The longest a 429's Retry-After keeps an endpoint open: a provider's "come back in a day"
# is more likely a quota reset the operator should see than a reason to stop probing.
MAX_COOLDOWN_SECONDS = 300.0

# Per time bucket (its index): (attempts, failures) inside the breaker's window.
Window = Mapping[int, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When breakers open and for how long (RouterConfig's ``breaker_*`` settings)."""

    window_seconds: float = 30.0
    min_requests: int = 10
    failure_rate: float = 0.5
    consecutive_failures: int = 5
    open_seconds: float = 30.0
    probes: int = 3
    max_cooldown_seconds: float = MAX_COOLDOWN_SECONDS

    @classmethod
    def from_config(cls, config: RouterConfig) -> BreakerPolicy:
        return cls(
            window_seconds=config.breaker_window_seconds,
            min_requests=config.breaker_min_requests,
            failure_rate=config.breaker_failure_rate,
            consecutive_failures=config.breaker_consecutive_failures,
            open_seconds=config.breaker_open_seconds,
            probes=config.breaker_probes,
        )

    @property
    def half_open_seconds(self) -> float:
        """How long a half-open period waits for a verdict before it closes by itself."""
        return self.open_seconds


@dataclass(frozen=True, slots=True)
class Opening:
    """One open period: ``epoch`` (when it opened, in ms) names it (probe tokens are counted
    per epoch), ``until`` (wall seconds) is when it turns half-open."""

    epoch: int
    until: float
    cause: str

    def encode(self) -> str:
        return f"{self.epoch} {round(self.until * 1000)} {self.cause}"

    @classmethod
    def decode(cls, raw: bytes | str | None) -> Opening | None:
        """The stored form back; None for nothing, or for something unreadable."""
        if raw is None:
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        parts = text.split(" ", 2)
        try:
            return cls(int(parts[0]), int(parts[1]) / 1000, parts[2] if len(parts) > 2 else "")
        except (ValueError, IndexError):
            return None


@dataclass(frozen=True, slots=True)
class Closing:
    """A close to share: delete the opening ``epoch`` (and only that one)."""

    epoch: int


Change = Opening | Closing


class Breaker:
    """One endpoint's breaker in this router. ``window`` gives the attempts and failures per
    time bucket inside the policy's window (shared figures plus local counts)."""

    def __init__(
        self,
        endpoint_id: str,
        policy: BreakerPolicy,
        clock: Callable[[], float],
        window: Callable[[], Window],
    ) -> None:
        self.endpoint_id = endpoint_id
        self.policy = policy
        self._clock = clock
        self._window = window
        self._opening: Opening | None = None  # None: closed
        self._half_open_logged = False
        self._consecutive = 0
        self._tokens = 0  # probe tokens held (half-open)
        self._granted = 0  # tokens granted for the current opening
        self._wanted = False  # a request was refused for want of a token
        self._baseline: dict[int, tuple[int, int]] = {}  # the window's counts at the last close
        # The last change not written to Redis yet (a later one replaces it), and the opening
        # Redis is known to hold (written or read back).
        self.unshared: Change | None = None
        self._shared_epoch: int | None = None

    # -- what the request path reads ------------------------------------------------------

    @property
    def opening(self) -> Opening | None:
        return self._opening

    @property
    def state(self) -> str:
        opening = self._opening
        if opening is None:
            return CLOSED
        if self._clock() < opening.until:
            return OPEN
        self._log_half_open()
        return HALF_OPEN

    def allows(self) -> bool:
        """Closed; or half-open with a probe token (taken). Never any I/O."""
        opening = self._opening
        if opening is None:
            return True
        if self._clock() < opening.until:
            return False
        self._log_half_open()
        if self._tokens > 0:
            self._tokens -= 1
            return True
        self._wanted = True  # the background task claims a token for the next request
        return False

    # -- what attempts tell it ------------------------------------------------------------

    def succeeded(self) -> None:
        """The endpoint answered (a first token, or a refusal of the request itself)."""
        self._consecutive = 0
        opening = self._opening
        if opening is not None and self._clock() >= opening.until:
            self._close("probe_succeeded")

    def failed(self) -> None:
        """The endpoint failed an attempt (5xx, timeout, stall, connection error, 429)."""
        opening = self._opening
        now = self._clock()
        if opening is not None:
            if now >= opening.until:  # half-open: a probe failed
                self._open(now + self.policy.open_seconds, "probe_failed")
            return  # open: an attempt sent before it opened; nothing new
        self._consecutive += 1
        if self._consecutive >= self.policy.consecutive_failures:
            self._open(now + self.policy.open_seconds, "consecutive_failures")
        else:
            self.judge()

    def cool_down(self, seconds: float) -> None:
        """A 429 said to come back in ``seconds``: open until then (capped), unless it is
        already open longer."""
        seconds = min(seconds, self.policy.max_cooldown_seconds)
        if seconds <= 0:
            self.failed()
            return
        until = self._clock() + seconds
        if self._opening is not None and self._opening.until >= until:
            return
        self._open(until, "rate_limited")

    def judge(self) -> None:
        """Open if the window's failure rate (since the last close) is past the policy's."""
        if self._opening is not None:
            return
        attempts, failures = self._counts()
        policy = self.policy
        if attempts >= policy.min_requests and failures >= policy.failure_rate * attempts:
            self._open(self._clock() + policy.open_seconds, "failure_rate")

    def _counts(self) -> tuple[int, int]:
        window = self._window()
        for bucket in [b for b in self._baseline if b not in window]:
            del self._baseline[bucket]  # aged out of the window
        attempts = failures = 0
        for bucket, (tried, failed) in window.items():
            base_tried, base_failed = self._baseline.get(bucket, (0, 0))
            attempts += max(0, tried - base_tried)
            failures += max(0, failed - base_failed)
        return attempts, failures

    # -- sharing with the other routers ---------------------------------------------------

    @property
    def wants_probe(self) -> bool:
        """Half-open, a request was refused for want of a token, and none is held."""
        opening = self._opening
        return (
            opening is not None
            and self._wanted
            and self._tokens == 0
            and self._clock() >= opening.until
        )

    def grant_probe(self, epoch: int) -> None:
        """A probe token claimed from the shared counter of opening ``epoch``."""
        if self._opening is not None and self._opening.epoch == epoch:
            self._give_token()

    def grant_local_probe(self) -> None:
        """Redis could not be asked: a token of this router's own, ``probes`` per opening."""
        if self.wants_probe:
            self._give_token()

    def _give_token(self) -> None:
        if self._granted < self.policy.probes:
            self._granted += 1
            self._tokens += 1
            self._wanted = False

    def written(self, change: Change, effective: Opening | None) -> None:
        """``change`` is in Redis; for an opening, ``effective`` is what Redis kept (another
        router's, when theirs lasts longer)."""
        if self.unshared is change:
            self.unshared = None
        if isinstance(change, Closing):
            self._shared_epoch = None
            return
        if effective is None:
            return
        self._shared_epoch = effective.epoch
        if effective != change and self._opening is change:
            self._take(effective, "shared")

    def adopt(self, shared: Opening | None) -> None:
        """What Redis holds for the endpoint (read by the refresh): another router's opening
        is taken; an opening that Redis held and no longer does was closed elsewhere (or
        expired without a verdict). A change of this router's not written yet goes first."""
        if self.unshared is not None:
            return
        current = self._opening
        if shared is None:
            if current is not None and self._shared_epoch == current.epoch:
                expired = self._clock() >= current.until + self.policy.half_open_seconds
                self._close("expired" if expired else "shared")
            self._shared_epoch = None
            return
        self._shared_epoch = shared.epoch
        if current != shared:
            self._take(shared, "shared")

    # -- transitions ----------------------------------------------------------------------

    def _open(self, until: float, cause: str) -> None:
        epoch = round(self._clock() * 1000)
        if self._opening is not None and epoch <= self._opening.epoch:
            epoch = self._opening.epoch + 1  # a new opening always gets a new epoch
        opening = Opening(epoch, round(until * 1000) / 1000, cause)  # as Redis stores it
        self._take(opening, cause)
        self.unshared = opening

    def _take(self, opening: Opening, cause: str) -> None:
        self._opening = opening
        self._consecutive = self._tokens = self._granted = 0
        self._wanted = False
        now = self._clock()
        state = OPEN if now < opening.until else HALF_OPEN
        self._half_open_logged = state == HALF_OPEN
        self._moved(state, cause, seconds=max(0.0, opening.until - now))

    def _close(self, cause: str) -> None:
        opening = self._opening
        self._opening = None
        self._consecutive = self._tokens = self._granted = 0
        self._wanted = False
        self._baseline = dict(self._window())
        if opening is not None and cause != "shared" and cause != "expired":
            self.unshared = Closing(opening.epoch)
        self._moved(CLOSED, cause)

    def _log_half_open(self) -> None:
        if not self._half_open_logged:
            self._half_open_logged = True
            self._moved(HALF_OPEN, "open_elapsed")

    def _moved(self, state: str, cause: str, seconds: float | None = None) -> None:
        metrics.BREAKER_TRANSITIONS.labels(self.endpoint_id, state, cause).inc()
        extra: dict[str, object] = {"endpoint": self.endpoint_id, "state": state, "cause": cause}
        if state == OPEN and seconds is not None:
            extra["open_seconds"] = round(seconds, 3)
        level = logging.WARNING if state == OPEN else logging.INFO
        log.log(level, "circuit breaker " + state.replace("_", "-"), extra=extra)
