"""Spend limits and prepaid credit, enforced with atomic reservations in Redis.

Routers reserve a request's worst-case cost before anything is sent upstream and settle to
the actual cost when the generation ends; metering loads the settled spend from Postgres (the
ledger is the truth) when Redis lost it or a key's limits change. Both use this module, so the
Redis layout lives in one place.

Amounts are integers of pico-dollars (1e-12 USD) in Redis: every price in the catalog is a
whole number of them per token, so sums are exact. Reservations round up (a reservation is
never smaller than what it covers). Limits are compared in Lua, whose numbers are doubles:
exact up to about $9,000 per counter, and within a few pico-dollars beyond. Counters change by
``HINCRBY``, which stops at a 64-bit integer (about $9.2 million): so an account's credit in
all and a key's limits are at most :data:`MAX_BUDGET_USD` (metering refuses more), and a
reservation is admitted only below a limit, so no counter can pass it.

Layout, under a prefix (``switchboard:budget:``). Everything of one account lives in ONE Redis
Cluster hash slot, under the hash tag ``{<prefix>acct:<account id>}`` (written ``A`` below), and
every script (:mod:`switchboard_core.budget_scripts`) is given its keys in ``KEYS``:

- ``A`` hash: ``credit`` (granted), ``spent``, ``reserved`` (the account's reservations),
  ``reserved:<key id>`` (those of one of its keys), ``loaded``, ``raises``;
- ``A:key:<key id>`` hash: ``spent_total``, ``spent_d:<YYYYMMDD>``, ``spent_m:<YYYYMM>`` (UTC),
  ``loaded`` once metering loaded its spend from the ledger, and ``raises``, how many times
  metering loaded or raised its counters (a late settle's test). A key belongs to one account
  for life, so its hash sits with the account's; what the key holds reserved is a field of the
  account hash, so releasing any reservation of the account touches only keys the script was
  given;
- ``A:res`` hash, a field per reservation: "<key id> <amount> <holder or ->"; ``A:exp``: a
  sorted set of the account's reservation ids by expiry (ms). Every reserve first releases up
  to 100 of the account's expired reservations: the fallback that returns a dead router's
  reservations when nothing swept them, exactly where they block spending;
- ``A:settled:<reservation id>`` (kept 10 minutes, a day when a sweep settled it) and
  ``A:grant:<grant id>`` (a day): markers that make a settle and a credit grant count once. A
  *late* settle (replayed from a router's spool after an outage) settles only a reservation
  still held, and counts its cost only where metering has not raised the counters since, so
  it cannot count twice however late it comes (:meth:`BudgetStore.settle`). The
  client retries a command whose connection dropped (:mod:`switchboard_core.redis_client`), so
  every script is safe to run twice;
- ``<prefix>holds:<router id>``: a set of the accounts a router reserved in (a slot of its own).
  It is how metering's sweep of a dead router (:mod:`switchboard_core.liveness`) finds its
  reservations without a script that crosses accounts: the sweep reads each listed account's
  ``A:res`` and settles the router's reservations there one script each
  (:meth:`BudgetStore.sweep_holder`), then drops the account from the set.

Why the index is crash safe. A reserve with a holder sends ``SADD holds`` alongside its script
(concurrently: no round trip added), and only returns once both are done; if the ``SADD``
failed it releases the reservation and fails. (A holder's reserves in an account it indexed
less than :data:`INDEX_MEMO_SECONDS` ago skip the ``SADD``: see there why that is safe.) So
every reservation a live router returned to its caller is indexed. A router killed between
the two leaves either an index entry with no reservation (the sweep finds nothing there) or a
reservation not indexed: that one expires (its TTL is the longest a request may last) and is
released by the account's next reserve, the only thing it blocked; the spend of its generation
reaches the ledger through the swept event, and metering's resync raises the counters to it.
Entries are removed only after the account was settled (by the sweep) or found to hold none
of the router's reservations (by a router leaving, which reserves no more), so a sweep cut
short (metering killed) is finished by the next one; settles are idempotent (the markers). A
live router's set holds every account it reserved in during its life (no pruning while it
reserves: a prune racing a reserve could drop an entry the reserve needs).

Upgrading from the layout before hash tags (``key:<id>``, ``acct:<id>``, ``res:<id>``, one
``res_exp``, ``held:<router>``): the new names start empty, and metering's marker that the
counters were loaded has a new name too (``loaded:slots``), so the first metering to start on
the new code loads every counter from the ledger (:meth:`Budgets.load_all
<switchboard_metering.budgets.Budgets.load_all>`). Reservations in flight under the old names
are never settled under the new ones: their generations' spend is in the ledger (usage events
do not change) and the minute's resync raises the counters to it. The old keys are left for an
operator to delete (``SCAN`` for ``<prefix>res:*``, ``<prefix>key:*`` and friends). Drain the
old routers before new ones serve: an old router reserves against counters the new code no
longer reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis.asyncio as redis

from switchboard_core.budget_scripts import ADD_CREDIT, LOAD, LOADED_FIELD, RAISE, RESERVE, SETTLE
from switchboard_core.errors import ResourceExhausted

PICO = Decimal(10) ** 12
DEFAULT_PREFIX = "switchboard:budget:"
# The most an account's credit in all (every grant) and a key's limit may be: the counters,
# in pico-dollars, stay inside the 64-bit integers HINCRBY allows (2**63 - 1 pico-dollars is
# $9,223,372.04).
MAX_BUDGET_USD = Decimal(9_000_000)


def to_pico(amount: Decimal) -> int:
    """USD to pico-dollars, rounded up."""
    return math.ceil(amount * PICO)


def from_pico(value: int | str | bytes | None) -> Decimal:
    return Decimal(int(value or 0)) / PICO


def day_field(now: datetime) -> str:
    return f"spent_d:{now:%Y%m%d}"


def month_field(now: datetime) -> str:
    return f"spent_m:{now:%Y%m}"


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's spend limits (USD; None: no limit) and whether its account is prepaid."""

    total: Decimal | None = None
    daily: Decimal | None = None
    monthly: Decimal | None = None
    prepaid: bool = False  # the account's credit bounds its keys' spend

    @property
    def enforced(self) -> bool:
        return self.prepaid or any(v is not None for v in (self.total, self.daily, self.monthly))


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    key_id: str
    account_id: str
    amount: Decimal
    holder: str = ""  # the router holding it (``held:<holder>``); "" when none is named
    # How often metering had loaded or raised the key's and the account's counters when it
    # was reserved ("?": not known): a late settle counts its cost only where that is still so.
    epochs: tuple[str, str] = field(default=("?", "?"), compare=False)


@dataclass(frozen=True, slots=True)
class KeySpend:
    total: Decimal
    today: Decimal
    this_month: Decimal
    reserved: Decimal


@dataclass(frozen=True, slots=True)
class AccountBalance:
    credit: Decimal
    spent: Decimal
    reserved: Decimal

    @property
    def available(self) -> Decimal:
        return self.credit - self.spent - self.reserved


class BudgetExceeded(ResourceExhausted):
    """The request's worst-case cost does not fit: nothing was sent upstream."""

    def __init__(self, window: str, remaining: Decimal, needed: Decimal) -> None:
        what = "the account's prepaid credit" if window == "credit" else f"the key's {window} limit"
        super().__init__(
            f"request refused: its worst-case cost ${needed:.6f} exceeds what is left of "
            f"{what} (${max(remaining, Decimal(0)):.6f})",
            reason="INSUFFICIENT_CREDIT" if window == "credit" else "KEY_LIMIT_EXCEEDED",
            metadata={"window": window, "remaining_usd": str(max(remaining, Decimal(0)))},
        )
        self.window = window


def _key_counters(total: Decimal, today: Decimal, this_month: Decimal, now: datetime) -> list[str]:
    """A key's settled spend as the field, value pairs the load and raise scripts take."""
    return [
        "spent_total",
        str(to_pico(total)),
        day_field(now),
        str(to_pico(today)),
        month_field(now),
        str(to_pico(this_month)),
    ]


def _account_counters(credit: Decimal, spent: Decimal) -> list[str]:
    return ["credit", str(to_pico(credit)), "spent", str(to_pico(spent))]


def _limit(value: Decimal | None) -> str:
    return "-1" if value is None else str(math.floor(value * PICO))


def account_tag(prefix: str, account_id: str) -> str:
    """The hash-tagged base of every key of one account (one Redis Cluster slot)."""
    return "{" + f"{prefix}acct:{account_id}" + "}"


def holds_key(prefix: str, router_id: str) -> str:
    """The set of accounts router ``router_id`` reserved in (the sweep's index)."""
    return f"{prefix}holds:{router_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# A settled marker's life: a router's settle, and a sweep's (the router may come back).
SETTLED_SECONDS = 600
SWEPT_SETTLED_SECONDS = 86400


# How long a holder's reserves in one account skip re-adding it to the holder's index (the
# ``SADD`` costs a command per request otherwise). Safe while shorter than a router's heartbeat
# TTL less its interval (10 s and 2 s by default): only a sweep deletes the index, and it sweeps
# a router whose heartbeat, rewritten around its last ``SADD``, has been gone for a TTL.
INDEX_MEMO_SECONDS = 1.0
_INDEX_MEMO_SIZE = 10_000  # entries kept before the expired ones are dropped


class BudgetStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        index_memo_seconds: float = INDEX_MEMO_SECONDS,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._memo_seconds = index_memo_seconds
        self._indexed: dict[tuple[str, str], float] = {}  # (holder, account) -> until
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._load = client.register_script(LOAD)
        self._raise = client.register_script(RAISE)
        self._add_credit = client.register_script(ADD_CREDIT)

    def account_key(self, account_id: str) -> str:
        return account_tag(self._prefix, account_id)

    def key_key(self, key_id: str, account_id: str) -> str:
        return f"{account_tag(self._prefix, account_id)}:key:{key_id}"

    def _keys(self, key_id: str, account_id: str) -> list[str]:
        """Key hash, account hash, reservation records, expiries: one slot."""
        base = account_tag(self._prefix, account_id)
        return [f"{base}:key:{key_id}", base, f"{base}:res", f"{base}:exp"]

    def _settled(self, account_id: str, reservation_id: str) -> str:
        return f"{account_tag(self._prefix, account_id)}:settled:{reservation_id}"

    async def reserve(
        self,
        key_id: str,
        account_id: str,
        amount: Decimal,
        limits: Limits,
        *,
        ttl_seconds: float,
        now: datetime | None = None,
        reservation_id: str | None = None,
        holder: str = "",
    ) -> Reservation:
        """Reserve ``amount`` atomically, or raise :class:`BudgetExceeded` naming the window.
        A ``holder`` (router id) is recorded as holding it until it is settled, and the
        account is added to the holder's index alongside (see the module doc).

        Reserving an id that is already reserved changes nothing (a retry)."""
        now = now or datetime.now(UTC)
        now_ms = int(time.time() * 1000)
        rid = reservation_id or "r" + secrets.token_hex(12)
        reservation = Reservation(rid, key_id, account_id, amount, holder)
        script = self._reserve(
            keys=self._keys(key_id, account_id),
            args=[
                reservation.id,
                to_pico(amount),
                now_ms,
                now_ms + int(ttl_seconds * 1000),
                day_field(now),
                month_field(now),
                _limit(limits.total),
                _limit(limits.daily),
                _limit(limits.monthly),
                "1" if limits.prepaid else "0",
                key_id,
                holder,
            ],
        )
        if holder and not self._memoized(holder, account_id):
            indexed: Any
            reply: Any
            indexed, reply = await asyncio.gather(
                self._redis.sadd(holds_key(self._prefix, holder), account_id),
                script,
                return_exceptions=True,
            )
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(indexed, BaseException) and int(reply[0]):
                # Held but not indexed: no sweep would find it, so it is not handed out.
                await self.settle(reservation, Decimal(0), now=now)
                raise indexed
            if not isinstance(indexed, BaseException):
                self._memoize(holder, account_id)
        else:
            reply = await script
        ok, window, remaining = reply
        text = _text(remaining)
        window = _text(window)
        if not int(ok):
            raise BudgetExceeded(window, Decimal(text) / PICO, amount)
        return dataclasses.replace(reservation, epochs=(window, text))

    def _memoized(self, holder: str, account_id: str) -> bool:
        return self._indexed.get((holder, account_id), 0.0) > time.monotonic()

    def _memoize(self, holder: str, account_id: str) -> None:
        if self._memo_seconds <= 0:
            return
        now = time.monotonic()
        if len(self._indexed) >= _INDEX_MEMO_SIZE:
            self._indexed = {k: until for k, until in self._indexed.items() if until > now}
            if len(self._indexed) >= _INDEX_MEMO_SIZE:
                self._indexed.clear()
        self._indexed[(holder, account_id)] = now + self._memo_seconds

    async def settle(
        self,
        reservation: Reservation,
        actual: Decimal,
        *,
        now: datetime | None = None,
        late: bool = False,
    ) -> bool:
        """Release the reservation and count the actual cost (once per reservation); returns
        whether this call did it.

        ``late``: a settle replayed after an outage (the router's spool). It only settles a
        reservation that is still held: one settled, swept or expired meanwhile is left alone
        (its marker may be gone after 10 minutes; its record is gone for good). And it counts
        the cost only on a hash (the key's, the account's) whose counters metering has not
        loaded or raised since the reservation was made (``raises``, an epoch both bump): a
        resync since then may have raised them to a ledger that already holds the generation,
        so counting again could count it twice; spend left uncounted that way is raised to
        the ledger by the next resync (a minute)."""
        now = now or datetime.now(UTC)
        r = reservation
        done = await self._settle(
            keys=[*self._keys(r.key_id, r.account_id), self._settled(r.account_id, r.id)],
            args=[
                r.id,
                to_pico(actual),
                day_field(now),
                month_field(now),
                "1" if late else "0",
                *r.epochs,
                SETTLED_SECONDS,
                r.holder,
            ],
        )
        return bool(int(done))

    async def held_accounts(self, holder: str) -> list[str]:
        """The accounts router ``holder`` reserved in and a sweep has not yet settled."""
        return sorted(_text(a) for a in await self._redis.smembers(holds_key(self._prefix, holder)))

    async def sweep_holder(
        self, holder: str, costs: Mapping[str, str], now: datetime | None = None
    ) -> int:
        """Settle every reservation dead router ``holder`` still holds, each to its
        generation's cost in pico-dollars (``costs``, by reservation id; 0 when absent), one
        account at a time; each account leaves the holder's index once settled. Returns how
        many this call settled. Running it again (or a router's own settle) counts nothing
        twice."""
        now = now or datetime.now(UTC)
        settled = 0
        index = holds_key(self._prefix, holder)
        for account_id in await self.held_accounts(holder):
            base = account_tag(self._prefix, account_id)
            for rid_raw, rec_raw in (await self._redis.hgetall(f"{base}:res")).items():
                rid, rec = _text(rid_raw), _text(rec_raw).split(" ")
                if len(rec) != 3 or rec[2] != holder:
                    continue
                done = await self._settle(
                    keys=[*self._keys(rec[0], account_id), self._settled(account_id, rid)],
                    args=[
                        rid,
                        costs.get(rid, "0"),
                        day_field(now),
                        month_field(now),
                        "sweep",
                        "?",
                        "?",
                        SWEPT_SETTLED_SECONDS,
                        holder,
                    ],
                )
                settled += int(done)
            await self._redis.srem(index, account_id)
        return settled

    async def prune_holds(self, holder: str) -> int:
        """Drop from router ``holder``'s index every account where it holds nothing; returns
        how many accounts are left. Only for a router that reserves no more (one leaving):
        a reserve running alongside could be dropped from the index."""
        left = 0
        for account_id in await self.held_accounts(holder):
            records = await self._redis.hvals(f"{account_tag(self._prefix, account_id)}:res")
            if any(_text(r).endswith(" " + holder) for r in records):
                left += 1
            else:
                await self._redis.srem(holds_key(self._prefix, holder), account_id)
        return left

    async def key_spend(
        self, key_id: str, account_id: str, now: datetime | None = None
    ) -> KeySpend:
        now = now or datetime.now(UTC)
        spent = await self._redis.hmget(
            self.key_key(key_id, account_id),
            ["spent_total", day_field(now), month_field(now)],
        )
        reserved = await self._redis.hget(self.account_key(account_id), f"reserved:{key_id}")
        return KeySpend(*(from_pico(v) for v in (*spent, reserved)))

    async def account_balance(self, account_id: str) -> AccountBalance:
        values = await self._redis.hmget(
            self.account_key(account_id), ["credit", "spent", "reserved"]
        )
        return AccountBalance(*(from_pico(v) for v in values))

    async def load_key(
        self,
        key_id: str,
        account_id: str,
        total: Decimal,
        today: Decimal,
        this_month: Decimal,
        now: datetime,
        *,
        replace: bool = True,
    ) -> bool:
        """Set a key's settled spend (from the ledger); reservations are left as they are.

        With ``replace=False`` a key already loaded keeps its counters: they hold spend
        settled by routers that the ledger may not have yet (the outbox lags a little), so
        overwriting them would forget it. Returns whether the counters were written.
        """
        written = await self._load(
            keys=[self.key_key(key_id, account_id)],
            args=["1" if replace else "0", *_key_counters(total, today, this_month, now)],
        )
        return bool(int(written))

    async def unload_key(self, key_id: str, account_id: str) -> None:
        """The key is no longer enforced: its counters go stale, so the next load replaces
        them."""
        await self._redis.hdel(self.key_key(key_id, account_id), LOADED_FIELD)

    async def load_account(
        self, account_id: str, credit: Decimal, spent: Decimal, *, replace: bool = True
    ) -> bool:
        """Set an account's credit and settled spend; see :meth:`load_key` for ``replace``."""
        written = await self._load(
            keys=[self.account_key(account_id)],
            args=["1" if replace else "0", *_account_counters(credit, spent)],
        )
        return bool(int(written))

    async def add_credit(self, account_id: str, amount: Decimal, grant_id: str) -> None:
        """Add a grant to a loaded account's credit (the grant is already in Postgres), once
        per ``grant_id`` however often the command is retried."""
        base = self.account_key(account_id)
        await self._add_credit(keys=[base, f"{base}:grant:{grant_id}"], args=[to_pico(amount)])

    async def raise_key(
        self,
        key_id: str,
        account_id: str,
        total: Decimal,
        today: Decimal,
        this_month: Decimal,
        now: datetime,
    ) -> int:
        """Raise a loaded key's settled spend to at least the ledger's; returns how many
        counters were behind (a router's settle was lost, or a generation admitted before
        the key was limited finished after it was loaded). Past days' and months' counters
        are deleted."""
        args = _key_counters(total, today, this_month, now)
        return int(await self._raise(keys=[self.key_key(key_id, account_id)], args=args))

    async def raise_account(self, account_id: str, credit: Decimal, spent: Decimal) -> int:
        """Raise a loaded account's credit and settled spend to at least Postgres's."""
        args = _account_counters(credit, spent)
        return int(await self._raise(keys=[self.account_key(account_id)], args=args))

    async def account_loaded(self, account_id: str) -> bool:
        """Whether the account's hash holds loaded counters."""
        return bool(await self._redis.hexists(self.account_key(account_id), LOADED_FIELD))

    async def key_loaded(self, key_id: str, account_id: str) -> bool:
        return bool(await self._redis.hexists(self.key_key(key_id, account_id), LOADED_FIELD))

    async def mark(self, name: str) -> None:
        await self._redis.set(f"{self._prefix}{name}", "1")

    async def marked(self, name: str) -> bool:
        return bool(await self._redis.exists(f"{self._prefix}{name}"))
