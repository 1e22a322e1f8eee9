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

Layout, under a prefix (``switchboard:budget:``):

- ``key:<key id>`` hash: ``spent_total``, ``spent_d:<YYYYMMDD>``, ``spent_m:<YYYYMM>`` (UTC),
  ``reserved``, ``loaded`` once metering loaded its spend from the ledger, and ``raises``, how
  many times metering loaded or raised its counters (a late settle's test);
- ``acct:<account id>`` hash: ``credit`` (granted), ``spent``, ``reserved``, ``loaded``,
  ``raises``;
- ``res:<reservation id>``: "<key id> <account id> <amount>"; ``res_exp``: a sorted set of
  reservation ids by expiry (ms). Every reserve first releases up to 100 expired
  reservations: the fallback that returns a dead router's reservations when nothing swept them;
- ``held:<router id>``: a set of the reservation ids a router holds (reserve adds, settle
  removes), so metering can settle a dead router's reservations within seconds
  (:mod:`switchboard_core.liveness`, whose keys share this prefix);
- ``settled:<reservation id>`` (kept 10 minutes, a day when a sweep settled it) and
  ``grant:<grant id>`` (a day): markers that make a settle and a credit grant count once. A
  *late* settle (replayed from a router's spool after an outage) settles only a reservation
  still held, and counts its cost only where metering has not raised the counters since, so
  it cannot count twice however late it comes (:meth:`BudgetStore.settle`). The
  client retries a command whose connection dropped (:mod:`switchboard_core.redis_client`), so
  every script (:mod:`switchboard_core.budget_scripts`) is safe to run twice.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

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


class BudgetStore:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._load = client.register_script(LOAD)
        self._raise = client.register_script(RAISE)
        self._add_credit = client.register_script(ADD_CREDIT)

    def _keys(self, key_id: str, account_id: str) -> list[str]:
        p = self._prefix
        return [f"{p}key:{key_id}", f"{p}acct:{account_id}", f"{p}res_exp"]

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
        A ``holder`` (router id) is recorded as holding it until it is settled.

        Reserving an id that is already reserved changes nothing (a retry)."""
        now = now or datetime.now(UTC)
        now_ms = int(time.time() * 1000)
        rid = reservation_id or "r" + secrets.token_hex(12)
        reservation = Reservation(rid, key_id, account_id, amount, holder)
        ok, window, remaining = await self._reserve(
            keys=self._keys(key_id, account_id),
            args=[
                self._prefix,
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
                account_id,
                holder,
            ],
        )
        text = remaining.decode() if isinstance(remaining, bytes) else str(remaining)
        window = window.decode() if isinstance(window, bytes) else str(window)
        if not int(ok):
            raise BudgetExceeded(window, Decimal(text) / PICO, amount)
        return dataclasses.replace(reservation, epochs=(window, text))

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
        done = await self._settle(
            keys=self._keys(reservation.key_id, reservation.account_id),
            args=[
                self._prefix,
                reservation.id,
                to_pico(actual),
                day_field(now),
                month_field(now),
                reservation.holder,
                "1" if late else "0",
                *reservation.epochs,
            ],
        )
        return bool(int(done))

    async def key_spend(self, key_id: str, now: datetime | None = None) -> KeySpend:
        now = now or datetime.now(UTC)
        values = await self._redis.hmget(
            f"{self._prefix}key:{key_id}",
            ["spent_total", day_field(now), month_field(now), "reserved"],
        )
        return KeySpend(*(from_pico(v) for v in values))

    async def account_balance(self, account_id: str) -> AccountBalance:
        values = await self._redis.hmget(
            f"{self._prefix}acct:{account_id}", ["credit", "spent", "reserved"]
        )
        return AccountBalance(*(from_pico(v) for v in values))

    async def load_key(
        self,
        key_id: str,
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
            keys=[f"{self._prefix}key:{key_id}"],
            args=["1" if replace else "0", *_key_counters(total, today, this_month, now)],
        )
        return bool(int(written))

    async def unload_key(self, key_id: str) -> None:
        """The key is no longer enforced: its counters go stale, so the next load replaces
        them."""
        await self._redis.hdel(f"{self._prefix}key:{key_id}", LOADED_FIELD)

    async def load_account(
        self, account_id: str, credit: Decimal, spent: Decimal, *, replace: bool = True
    ) -> bool:
        """Set an account's credit and settled spend; see :meth:`load_key` for ``replace``."""
        written = await self._load(
            keys=[f"{self._prefix}acct:{account_id}"],
            args=["1" if replace else "0", *_account_counters(credit, spent)],
        )
        return bool(int(written))

    async def add_credit(self, account_id: str, amount: Decimal, grant_id: str) -> None:
        """Add a grant to a loaded account's credit (the grant is already in Postgres), once
        per ``grant_id`` however often the command is retried."""
        await self._add_credit(
            keys=[f"{self._prefix}acct:{account_id}"],
            args=[f"{self._prefix}grant:{grant_id}", to_pico(amount)],
        )

    async def raise_key(
        self, key_id: str, total: Decimal, today: Decimal, this_month: Decimal, now: datetime
    ) -> int:
        """Raise a loaded key's settled spend to at least the ledger's; returns how many
        counters were behind (a router's settle was lost, or a generation admitted before
        the key was limited finished after it was loaded). Past days' and months' counters
        are deleted."""
        args = _key_counters(total, today, this_month, now)
        return int(await self._raise(keys=[f"{self._prefix}key:{key_id}"], args=args))

    async def raise_account(self, account_id: str, credit: Decimal, spent: Decimal) -> int:
        """Raise a loaded account's credit and settled spend to at least Postgres's."""
        args = _account_counters(credit, spent)
        return int(await self._raise(keys=[f"{self._prefix}acct:{account_id}"], args=args))

    async def is_loaded(self, key: str) -> bool:
        """Whether ``key:<id>`` or ``acct:<id>`` holds loaded counters."""
        return bool(await self._redis.hexists(f"{self._prefix}{key}", LOADED_FIELD))

    async def mark(self, name: str) -> None:
        await self._redis.set(f"{self._prefix}{name}", "1")

    async def marked(self, name: str) -> bool:
        return bool(await self._redis.exists(f"{self._prefix}{name}"))
