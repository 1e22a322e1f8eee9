"""A last-known-good cache of credentials that metering verified, for the services that ask it.

The router checks every request's API key, and the router and catalog every operator key,
with metering. :class:`VerifiedCache` keeps metering's good answers, keyed by the secret's
SHA-256 (no secret is kept), so that:

- **Fresh** (younger than ``ttl_seconds``): an answer is served as is.
- **Due** (past ``ttl_seconds``, or marked due): the next request asks metering again,
  waiting at most ``timeout_seconds`` (the fetch's gRPC deadline). If metering cannot answer
  (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``: :class:`Unreachable`), the last answer is served
  *stale*, counted in ``switchboard_key_cache_stale_total``. Once a refresh failed, requests
  of due keys no longer wait on a dead metering: they are served stale at once while a
  single background refresh per key runs at most every ``REFRESH_RETRY_SECONDS``. The first
  answer from metering ends that state (logged, both ways; never with a secret).
- **Too old** (``stale_seconds`` past the last good answer) or past the key's own expiry:
  the answer is dropped; the key is then like one never seen, which fails with
  ``UNAVAILABLE`` and ``RetryInfo`` within ``timeout_seconds`` while metering is unreachable.
- A **verdict** (revoked, invalid, expired) drops the answer and reaches the caller.

Concurrent requests for the same secret share one fetch. Each answer is indexed by the
subjects metering announces changes under (:mod:`switchboard_core.key_changes`:
``key:<id>``, ``account:<id>``, ``operator:<id>``): :meth:`VerifiedCache.evict` drops only
the answers a change names, so one key's new limit does not send every other key back to
metering. An evicted answer is gone, never served stale: a key revoked before or during a
metering partition stays refused (``UNAVAILABLE``) until metering can say so itself. An
answer fetched while a change to one of its subjects was announced is served to the requests
that waited for it, and not kept.

:meth:`VerifiedCache.mark_all_due` is for a change listener that reconnects (it may have
missed announcements). It does not drop the answers: it makes each one due, so the next use
re-verifies with metering and a missed revocation applies then. The price is that while
metering is also unreachable, a key revoked during the listener's gap keeps serving for up
to ``stale_seconds``; dropping everything instead would turn a short Redis blip during a
metering partition into a refusal of every key. ``stale_seconds`` bounds that trade-off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter

from switchboard_core.errors import SwitchboardError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 100_000
# A due key whose refresh failed is not asked about again sooner than this.
REFRESH_RETRY_SECONDS = 1.0
# Marks a change that concerns every cached answer (a listener that reconnected).
EVERYTHING = "*"

STALE_SERVED = Counter(
    "switchboard_key_cache_stale_total",
    "Verifications answered from the last-known-good cache because metering was unreachable,"
    " by kind of key (api_key, operator_key).",
    ["kind"],
)
UNAVAILABLE = Counter(
    "switchboard_key_cache_unavailable_total",
    "Verifications refused UNAVAILABLE: metering unreachable and no usable cached answer,"
    " by kind of key.",
    ["kind"],
)


@dataclass(frozen=True, slots=True)
class Verified(Generic[T]):
    """A good answer from metering: the value, the subjects it is announced under, and
    when the key expires (Unix seconds; None when it does not)."""

    value: T
    subjects: tuple[str, ...]
    expire_time: float | None = None


class Unreachable(Exception):
    """Metering gave no answer (not a verdict); ``error`` is what a caller gets when no
    cached answer can stand in."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class _Entry(Generic[T]):
    value: T
    subjects: tuple[str, ...]
    fresh_until: float  # monotonic
    usable_until: float  # monotonic: the stale bound, and the key's expiry
    retry_at: float = 0.0  # no background refresh before this


class VerifiedCache(Generic[T]):
    """See the module doc. ``fetch(secret)`` asks metering (within ``timeout_seconds``),
    returns :class:`Verified`, raises :class:`Unreachable` or a verdict."""

    def __init__(
        self,
        kind: str,
        fetch: Callable[[str], Awaitable[Verified[T]]],
        *,
        ttl_seconds: float,
        stale_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = kind
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._stale = max(stale_seconds, ttl_seconds)
        self._max_entries = max_entries
        self._clock = clock
        self._wall = wall_clock
        self._entries: dict[bytes, _Entry[T]] = {}
        self._by_subject: dict[str, set[bytes]] = {}
        self._pending: dict[bytes, asyncio.Task[T]] = {}
        self._tasks: set[asyncio.Task[T]] = set()  # strong references until done
        # Changes announced while fetches were in flight: (sequence number, subject).
        self._changes: list[tuple[int, str]] = []
        self._sequence = 0
        self._in_flight = 0
        # Whether the last fetch found metering unreachable, and stale answers since then.
        self.unreachable = False
        self._stale_served = 0
        self._stale_counter = STALE_SERVED.labels(kind)
        self._unavailable_counter = UNAVAILABLE.labels(kind)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, secret: str) -> T:
        digest = hashlib.sha256(secret.encode()).digest()
        now = self._clock()
        entry = self._entries.get(digest)
        if entry is not None:
            if now < entry.fresh_until:
                return entry.value
            if now >= entry.usable_until:
                self._drop(digest)
                entry = None
        if entry is None:
            try:
                return await self._fetch_shared(secret, digest)
            except Unreachable as error:
                self._unavailable_counter.inc()
                raise error.error from None
        if self.unreachable:  # don't make this request wait on a metering that just failed
            if now >= entry.retry_at:
                entry.retry_at = now + REFRESH_RETRY_SECONDS
                self._start_fetch(secret, digest)
            return self._serve_stale(entry)
        try:
            return await self._fetch_shared(secret, digest)
        except Unreachable as error:
            if self._entries.get(digest) is not entry:  # evicted meanwhile: not served stale
                self._unavailable_counter.inc()
                raise error.error from None
            entry.retry_at = self._clock() + REFRESH_RETRY_SECONDS
            return self._serve_stale(entry)

    def evict(self, subject: str) -> int:
        """Drop the answers announced under ``subject``; how many were dropped."""
        self._note_change(subject)
        digests = self._by_subject.pop(subject, set())
        for digest in digests:
            self._drop(digest)
        return len(digests)

    def evict_all(self) -> None:
        """Drop every answer (a change this cache cannot attribute)."""
        self._note_change(EVERYTHING)
        self._entries.clear()
        self._by_subject.clear()

    def mark_all_due(self) -> None:
        """Make every answer due for re-verification, still usable stale (see module doc)."""
        self._note_change(EVERYTHING)
        for entry in self._entries.values():
            entry.fresh_until = 0.0
            entry.retry_at = 0.0

    def _note_change(self, subject: str) -> None:
        self._sequence += 1
        if self._in_flight:
            self._changes.append((self._sequence, subject))
        # Requests from now on do not join a fetch that metering may have answered before
        # the change; those already waiting get its answer, which is not kept.
        self._pending.clear()

    def _changed_since(self, sequence: int, subjects: tuple[str, ...]) -> bool:
        return any(
            number > sequence and (subject == EVERYTHING or subject in subjects)
            for number, subject in self._changes
        )

    def _serve_stale(self, entry: _Entry[T]) -> T:
        self._stale_counter.inc()
        self._stale_served += 1
        return entry.value

    async def _fetch_shared(self, secret: str, digest: bytes) -> T:
        task = self._pending.get(digest) or self._start_fetch(secret, digest)
        return await asyncio.shield(task)

    def _start_fetch(self, secret: str, digest: bytes) -> asyncio.Task[T]:
        task = self._pending.get(digest)
        if task is not None:
            return task
        task = asyncio.create_task(self._refresh(secret, digest))
        self._pending[digest] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._fetch_done(digest, done))
        return task

    def _fetch_done(self, digest: bytes, task: asyncio.Task[T]) -> None:
        self._tasks.discard(task)
        if self._pending.get(digest) is task:
            del self._pending[digest]
        if not task.cancelled():
            task.exception()  # retrieved here: a background refresh has no other reader

    async def _refresh(self, secret: str, digest: bytes) -> T:
        sequence = self._sequence
        self._in_flight += 1
        try:
            verified = await self._fetch(secret)
            self._set_unreachable(False)
            if not self._changed_since(sequence, verified.subjects):
                self._store(digest, verified)
            return verified.value
        except Unreachable:
            self._set_unreachable(True)
            raise
        except SwitchboardError:  # metering's verdict on this key
            self._set_unreachable(False)
            self._drop(digest)
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._changes.clear()

    def _set_unreachable(self, unreachable: bool) -> None:
        if unreachable == self.unreachable:
            return
        self.unreachable = unreachable
        if unreachable:
            log.warning(
                "metering unreachable; serving keys it verified before from the cache",
                extra={"key_kind": self.kind, "stale_seconds": self._stale},
            )
        else:
            log.info(
                "metering reachable again",
                extra={"key_kind": self.kind, "stale_served": self._stale_served},
            )
            self._stale_served = 0

    def _store(self, digest: bytes, verified: Verified[T]) -> None:
        now = self._clock()
        fresh = self._ttl
        usable = self._stale
        if verified.expire_time is not None:  # never past the key's expiry
            left = verified.expire_time - self._wall()
            fresh, usable = min(fresh, left), min(usable, left)
        if fresh <= 0:
            self._drop(digest)
            return
        self._drop(digest)
        while len(self._entries) >= self._max_entries:
            self._drop(next(iter(self._entries)))  # the oldest answer
        self._entries[digest] = _Entry(verified.value, verified.subjects, now + fresh, now + usable)
        for subject in verified.subjects:
            self._by_subject.setdefault(subject, set()).add(digest)

    def _drop(self, digest: bytes) -> None:
        entry = self._entries.pop(digest, None)
        if entry is None:
            return
        for subject in entry.subjects:
            linked = self._by_subject.get(subject)
            if linked is not None:
                linked.discard(digest)
                if not linked:
                    del self._by_subject[subject]
