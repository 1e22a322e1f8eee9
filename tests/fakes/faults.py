"""Faults a fake provider injects: how it misbehaves, as opposed to what it answers.

A :class:`~tests.fakes.script.Script` says what a provider answers and is the same for every
request. :class:`Faults` says how often and how it fails or dawdles, request by request, as
real providers do: a 5xx burst, a share of 5xx or 429 (with ``Retry-After``) answers,
connection resets, requests accepted and never answered, streams that stall after a few
chunks, a slow time to first token, and chunks spaced (with jitter) as a provider generating
at some tokens per second sends them.

Each fake holds a :class:`FaultInjector`; ``fake.inject(Faults(...))`` switches faults at run
time and restarts the seeded draw. Every generation request (the POST routes) draws once, in
arrival order, from one ``random.Random(seed)``: the same seed over the same number of requests
gives the same outcomes (which request gets which depends on arrival order under concurrency;
how many of each does not). Model-list routes (GET) answer as scripted.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "error", "reset", "hang", "stall"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "error", "reset", "hang", "stall")
MAX_DELAY_SECONDS = 3600.0


@dataclass(frozen=True)
class Faults:
    """How a fake misbehaves. All rates are shares of requests (0 to 1, together at most 1);
    delays are seconds; ``jitter`` varies each delay uniformly by that fraction either way."""

    seed: int = 0
    # The first ``burst`` requests after inject() fail with error_status (a 5xx burst); the
    # rates apply from then on.
    burst: int = 0
    error_rate: float = 0.0  # answered at once with error_status (the provider's error body)
    error_status: int = 500
    retry_after: str | None = None  # the Retry-After header sent with error_status
    reset_rate: float = 0.0  # the connection is reset (RST) before any response byte
    hang_rate: float = 0.0  # the request is read and never answered, until the client leaves
    stall_rate: float = 0.0  # the stream starts, then goes silent after stall_after chunks
    stall_after: int = 1
    first_token_delay: float = 0.0  # after the response headers, before the first event
    chunk_gap: float = 0.0  # between content chunks (1 / tokens per second)
    jitter: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.reset_rate, self.hang_rate, self.stall_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError("fault rates are each 0 to 1 and together at most 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status is an HTTP error status (400 to 599)")
        if self.burst < 0 or self.stall_after < 0:
            raise ValueError("burst and stall_after are counts (0 or more)")
        delays = (self.first_token_delay, self.chunk_gap)
        if any(not 0.0 <= d <= MAX_DELAY_SECONDS for d in delays):
            raise ValueError(f"delays are 0 to {MAX_DELAY_SECONDS:g} seconds")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter is a fraction, 0 to 1")


NO_FAULTS = Faults()


@dataclass
class Fault:
    """One request's draw: its outcome, and its own RNG for the delays of its stream (so the
    spacing of one stream does not depend on how other requests interleave)."""

    outcome: Outcome
    faults: Faults
    rng: random.Random

    def _vary(self, seconds: float) -> float:
        if not seconds or not self.faults.jitter:
            return seconds
        return seconds * (1.0 + self.rng.uniform(-self.faults.jitter, self.faults.jitter))

    def first_token_delay(self) -> float:
        return self._vary(self.faults.first_token_delay)

    def chunk_gap(self) -> float:
        return self._vary(self.faults.chunk_gap)


@dataclass
class FaultInjector:
    """A fake's faults and the state of their draw; ``outcomes`` counts what was drawn."""

    faults: Faults = NO_FAULTS
    drawn: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def reset(self, faults: Faults) -> None:
        """Switch to ``faults`` and start their draw afresh (the burst counts again)."""
        self.faults = faults
        self.drawn = 0
        self.outcomes = Counter()
        self.rng = random.Random(faults.seed)

    def draw(self) -> Fault:
        """The next request's fault. Every draw takes exactly two numbers from the RNG,
        whatever the outcome, so the sequence of outcomes depends only on the seed."""
        faults = self.faults
        roll = self.rng.random()
        stream_seed = self.rng.getrandbits(64)
        outcome: Outcome = "ok"
        if self.drawn < faults.burst:
            outcome = "error"
        else:
            shares: tuple[tuple[Outcome, float], ...] = (
                ("error", faults.error_rate),
                ("reset", faults.reset_rate),
                ("hang", faults.hang_rate),
                ("stall", faults.stall_rate),
            )
            for kind, rate in shares:
                if roll < rate:
                    outcome = kind
                    break
                roll -= rate
        self.drawn += 1
        self.outcomes[outcome] += 1
        return Fault(outcome, faults, random.Random(stream_seed))
