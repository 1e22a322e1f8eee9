"""Credits and spend from the ledger, and loading them into the routers' Redis budgets.

Postgres is the truth: credit is the sum of an account's grants, spend the sum of its
generations (read from the hourly rollups). Routers enforce limits against counters in Redis
(:mod:`switchboard_core.budget`); :meth:`Budgets.load_all` rebuilds those counters from
Postgres (at start-up when Redis has none, e.g. after losing its data), and
:meth:`Budgets.resync` raises, every minute, any counter that fell behind Postgres (a settle or
a grant lost to a Redis blip). Setting a key's first limits or an account's first credit loads
that key or account; later changes leave the loaded counters alone (they include spend routers
settled that the ledger may not hold yet) and a grant is added to the account's credit.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
from prometheus_client import Counter
from redis.exceptions import RedisError

from switchboard.metering.v1 import metering_pb2
from switchboard_core.auth import actor
from switchboard_core.budget import MAX_BUDGET_USD, BudgetStore
from switchboard_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from switchboard_core.money import ZERO, MoneyFormatError, format_usd, parse_usd
from switchboard_core.periodic import Periodic
from switchboard_core.rate_limits import RateLimits
from switchboard_metering.keys import (
    LIMIT_FIELDS,
    KeyStore,
    account_not_found,
    parse_limits,
    validate_account_id,
)

log = logging.getLogger(__name__)

# A key's settled spend in all, today and this month (UTC), from the rollups ``r``; {now}
# is the parameter holding the current time.
_SPEND = """
coalesce(sum(r.cost), 0) AS total,
coalesce(sum(r.cost) FILTER (WHERE r.bucket_start >= date_trunc('day', {now}, 'UTC')), 0)
    AS today,
coalesce(sum(r.cost) FILTER (WHERE r.bucket_start >= date_trunc('month', {now}, 'UTC')), 0)
    AS this_month
"""
_KEY_SPEND = f"SELECT {_SPEND.format(now='$2')} FROM usage_rollups r WHERE r.key_id = $1"
# Every key that has limits: the keys whose counters routers enforce.
_LIMITED_KEYS_SPEND = f"""
SELECT k.id, k.account_id, {_SPEND.format(now="$1")}
FROM api_keys k LEFT JOIN usage_rollups r ON r.key_id = k.id
WHERE k.revoked_at IS NULL
  AND (k.limit_total IS NOT NULL OR k.limit_daily IS NOT NULL OR k.limit_monthly IS NOT NULL)
GROUP BY k.id, k.account_id
"""
# An account ``a``'s credit (all its grants) and spend (all its keys').
_CREDIT_AND_SPEND = """
coalesce((SELECT sum(amount) FROM credit_grants g WHERE g.account_id = a.id), 0) AS credit,
coalesce((SELECT sum(r.cost) FROM usage_rollups r JOIN api_keys k ON k.id = r.key_id
          WHERE k.account_id = a.id), 0) AS spent
"""
_ACCOUNT = f"SELECT a.prepaid, {_CREDIT_AND_SPEND} FROM accounts a WHERE a.id = $1"
_PREPAID = f"SELECT a.id, {_CREDIT_AND_SPEND} FROM accounts a WHERE a.prepaid"
_GRANT = """
WITH account AS (
    INSERT INTO accounts (id, prepaid) VALUES ($1, true)
    ON CONFLICT (id) DO UPDATE SET prepaid = true
)
INSERT INTO credit_grants (account_id, amount, note, request_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (account_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
RETURNING id
"""
_EARLIER_GRANT = "SELECT amount FROM credit_grants WHERE account_id = $1 AND request_id = $2"
_CREDIT = "SELECT sum(amount) FROM credit_grants WHERE account_id = $1"
MAX_REQUEST_ID_LENGTH = 128
# Named anew with the hash-tagged layout (switchboard_core.budget): an upgrade loads everything.
LOADED_MARKER = "loaded:slots"
RESYNC_INTERVAL_SECONDS = 60.0

COUNTERS_RAISED = Counter(
    "switchboard_budget_counters_raised_total",
    "Redis spend counters found behind the ledger and raised to it by the periodic resync.",
)


class Budgets:
    def __init__(self, pool: asyncpg.Pool, keys: KeyStore, store: BudgetStore) -> None:
        self._pool = pool
        self._keys = keys
        self._store = store
        self._resync = Periodic(
            "budget-resync",
            self.resync,
            RESYNC_INTERVAL_SECONDS,
            (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError),
        )

    async def key_spend(self, key_id: str, now: datetime) -> tuple[Decimal, Decimal, Decimal]:
        row = await self._pool.fetchrow(_KEY_SPEND, key_id, now)
        assert row is not None
        return row["total"], row["today"], row["this_month"]

    async def load_key(self, key_id: str, account_id: str, *, replace: bool = True) -> None:
        now = datetime.now(UTC)
        total, today, month = await self.key_spend(key_id, now)
        await self._store.load_key(key_id, account_id, total, today, month, now, replace=replace)

    async def load_account(self, account_id: str, *, replace: bool = True) -> None:
        row = await self._pool.fetchrow(_ACCOUNT, account_id)
        if row is not None:
            await self._store.load_account(account_id, row["credit"], row["spent"], replace=replace)

    async def load_all(self) -> int:
        """Load every limited key and prepaid account into Redis; returns how many."""
        now = datetime.now(UTC)
        keys = await self._pool.fetch(_LIMITED_KEYS_SPEND, now)
        accounts = await self._pool.fetch(_PREPAID)
        for key in keys:
            await self._store.load_key(
                key["id"], key["account_id"], key["total"], key["today"], key["this_month"], now
            )
        for account in accounts:
            await self._store.load_account(account["id"], account["credit"], account["spent"])
        await self._store.mark(LOADED_MARKER)
        log.info("budgets loaded into redis", extra={"keys": len(keys), "accounts": len(accounts)})
        return len(keys) + len(accounts)

    async def load_if_missing(self) -> None:
        if not await self._store.marked(LOADED_MARKER):
            await self.load_all()

    async def resync(self, now: datetime | None = None) -> int:
        """Raise every loaded counter that is behind Postgres to Postgres's value.

        Redis spend is normally ahead of the ledger (routers settle before the outbox drains)
        and Redis credit never ahead of the grants (a grant is committed first), so counters
        only ever go up here: taking the larger of the two never forgets spend or credit that
        either side has seen. Returns how many counters were raised.
        """
        now = now or datetime.now(UTC)
        raised = 0
        for row in await self._pool.fetch(_LIMITED_KEYS_SPEND, now):
            raised += await self._store.raise_key(
                row["id"], row["account_id"], row["total"], row["today"], row["this_month"], now
            )
        for row in await self._pool.fetch(_PREPAID):
            raised += await self._store.raise_account(row["id"], row["credit"], row["spent"])
        if raised:
            COUNTERS_RAISED.inc(raised)
            log.warning("budget counters were behind the ledger", extra={"raised": raised})
        return raised

    def start(self) -> None:
        self._resync.start()

    async def stop(self) -> None:
        await self._resync.stop()

    async def set_limits(
        self,
        key_id: str,
        limits: metering_pb2.SpendLimits,
        rate_limits: RateLimits | None = None,
    ) -> metering_pb2.ApiKey:
        """Replace the key's spend limits (and its rate limits, when given: None keeps them),
        in one statement, then load or unload its budget counters."""
        values = parse_limits(limits)
        too_high = [
            (f"limits.{name}", f"at most {MAX_BUDGET_USD} (what the budget counters hold)")
            for (name, _), value in zip(LIMIT_FIELDS, values, strict=True)
            if value is not None and value > MAX_BUDGET_USD
        ]
        if too_high:
            raise InvalidArgument(too_high)
        key = await self._keys.set_limits(key_id, limits, rate_limits)
        if key.HasField("limits"):
            # A key enforced already keeps its Redis counters: they are ahead of the ledger.
            await self.load_key(key_id, key.account_id, replace=False)
        else:
            await self._store.unload_key(key_id, key.account_id)
        return key

    async def add_credits(
        self, account_id: str, amount_usd: str, note: str, request_id: str = ""
    ) -> tuple[metering_pb2.AccountBalance, bool]:
        """Grant credit; returns the balance and whether ``request_id`` was granted before
        (then nothing is added)."""
        validate_account_id(account_id)
        problems: dict[str, str] = {}
        amount = ZERO
        try:
            amount = parse_usd(amount_usd)
            if amount <= ZERO:
                problems["amount_usd"] = "must be positive"
            elif amount > MAX_BUDGET_USD:
                problems["amount_usd"] = f"at most {MAX_BUDGET_USD} (an account's credit in all)"
        except MoneyFormatError as error:
            problems["amount_usd"] = str(error)
        if len(note) > 256:
            problems["note"] = "at most 256 characters"
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            problems["request_id"] = f"at most {MAX_REQUEST_ID_LENGTH} characters"
        if problems:
            raise InvalidArgument(problems)
        async with self._pool.acquire() as conn, conn.transaction():
            # The grant's upsert of the account row holds its lock to the commit: concurrent
            # grants to one account add up one after the other.
            granted = await conn.fetchval(_GRANT, account_id, amount, note, request_id or None)
            if granted is None:  # this request_id was granted before
                earlier = await conn.fetchval(_EARLIER_GRANT, account_id, request_id)
            elif (credit := await conn.fetchval(_CREDIT, account_id)) > MAX_BUDGET_USD:
                raise FailedPrecondition(  # and the transaction is rolled back
                    f"account {account_id!r} would hold {format_usd(credit)} USD of credit:"
                    f" at most {MAX_BUDGET_USD} in all",
                    reason="ACCOUNT_CREDIT_CAP",
                    metadata={"account_id": account_id, "max_credit_usd": str(MAX_BUDGET_USD)},
                )
        if granted is None:
            if earlier != amount:
                raise AlreadyExists(
                    f"request_id {request_id!r} already granted {format_usd(earlier)} USD"
                    f" to account {account_id!r}, not {format_usd(amount)}",
                    reason="CREDIT_REQUEST_ID_REUSED",
                )
            return await self.account_balance(account_id), True
        if await self._store.account_loaded(account_id):
            # Counters ahead of the ledger stay; only the grant is added.
            await self._store.add_credit(account_id, amount, str(granted))
        else:
            await self.load_account(account_id)
        log.info(
            "credits added",
            extra={
                "account_id": account_id,
                "amount_usd": format_usd(amount),
                "grant_id": granted,
                "actor": actor(),
            },
        )
        return await self.account_balance(account_id), False

    async def account_balance(self, account_id: str) -> metering_pb2.AccountBalance:
        row = await self._pool.fetchrow(_ACCOUNT, account_id)
        if row is None:
            raise account_not_found(account_id)
        reserved = (await self._store.account_balance(account_id)).reserved
        available = row["credit"] - row["spent"] - reserved if row["prepaid"] else ZERO
        return metering_pb2.AccountBalance(
            account_id=account_id,
            prepaid=row["prepaid"],
            credit_usd=format_usd(row["credit"]),
            spent_usd=format_usd(row["spent"]),
            reserved_usd=format_usd(reserved),
            available_usd=format_usd(max(available, ZERO)),
        )

    async def balance(
        self, request: metering_pb2.GetBalanceRequest
    ) -> metering_pb2.GetBalanceResponse:
        if bool(request.account_id) == bool(request.key_id):
            raise InvalidArgument({"account_id": "give account_id or key_id (one of them)"})
        reply = metering_pb2.GetBalanceResponse()
        account_id = request.account_id
        if request.key_id:
            key = await self._keys.get(request.key_id)
            account_id = key.account_id
            now = datetime.now(UTC)
            total, today, month = await self.key_spend(key.id, now)
            reserved = (await self._store.key_spend(key.id, account_id, now)).reserved
            reply.key.CopyFrom(
                metering_pb2.KeySpend(
                    key_id=key.id,
                    limits=key.limits,
                    spent_total_usd=format_usd(total),
                    spent_today_usd=format_usd(today),
                    spent_this_month_usd=format_usd(month),
                    reserved_usd=format_usd(reserved),
                )
            )
        reply.account.CopyFrom(await self.account_balance(account_id))
        return reply
