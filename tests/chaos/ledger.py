"""After a scenario: does the ledger hold exactly what clients were told, and did every
reservation of the limited key go?

A told generation (the client got its final message) must be in the ledger with the counts
and cost the client was told. A cut one (the client saw it start, then an error) may be in
it, billed for what the upstream produced; the check reports how many were and their billed
completion tokens against the words the client got. A row of a generation the client never
saw start (its call failed first) is reported as ``unseen``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as redis

from tests.chaos.load import Call
from tests.e2e.support import Told, ledger_rows


@dataclass
class LedgerCheck:
    told: int = 0  # generations whose final message reached the client
    missing: int = 0  # told, not in the ledger once the wait ended
    wrong: int = 0  # in the ledger with other counts or cost than told
    unseen: int = 0  # in the ledger, never seen by a client
    cut: int = 0  # started, then an error reached the client
    cut_billed: int = 0  # of those, in the ledger
    cut_words: int = 0  # words the cut streams delivered that were billed
    cut_tokens: int = 0  # completion tokens billed for them
    settle_seconds: float = 0.0
    held: int = 0  # reservations of the limited key still in Redis afterwards
    held_after: float = 0.0  # seconds waited for them to go
    example: str = ""  # one generation whose row differs from what its client was told

    @property
    def exact(self) -> bool:
        return not self.missing and not self.wrong


async def check(
    database_url: str,
    key_ids: list[str],
    calls: list[Call],
    timeout: float,
) -> LedgerCheck:
    """Wait (at most ``timeout`` s) for the ledger to hold every told generation, then
    compare it with what the clients were told."""
    told: Told = {c.generation_id: c.told for c in calls if c.ok and c.told is not None}
    cut = {c.generation_id: c for c in calls if c.failed and c.generation_id}
    seen = {c.generation_id for c in calls if c.generation_id}
    loop = asyncio.get_running_loop()
    began = loop.time()
    rows: Told = {}
    while True:
        rows = {}
        for key_id in key_ids:
            rows.update(await ledger_rows(database_url, key_id))
        waited = loop.time() - began
        done = told.keys() <= rows.keys()
        # A cut stream's usage may come a moment after the told ones; give it a few seconds.
        if (done and (cut.keys() <= rows.keys() or waited > 5)) or waited > timeout:
            break
        await asyncio.sleep(0.25)
    result = LedgerCheck(told=len(told), cut=len(cut), settle_seconds=loop.time() - began)
    result.missing = len(told.keys() - rows.keys())
    differ = [(t, rows[g]) for g, t in told.items() if g in rows and rows[g] != t]
    result.wrong = len(differ)
    if differ:
        (p, c, cost), (lp, lc, lcost) = differ[0]
        result.example = f"told {p}+{c} tok ${cost}, ledger {lp}+{lc} tok ${lcost}"
    result.unseen = len(rows.keys() - seen)
    for generation_id, call in cut.items():
        if generation_id in rows:
            result.cut_billed += 1
            result.cut_words += call.words
            result.cut_tokens += rows[generation_id][1]
    return result


async def held_reservations(client: redis.Redis, budget_prefix: str, key_id: str) -> int:
    """How many reservations of ``key_id`` Redis still holds (each account's ``res`` hash:
    switchboard_core.budget)."""
    held = 0
    match = "{" + f"{budget_prefix}acct:*}}:res"
    async for name in client.scan_iter(match=match, count=1000):
        for record in (await client.hgetall(name)).values():
            text = record.decode() if isinstance(record, bytes) else str(record)
            if text.split(" ", 1)[0] == key_id:
                held += 1
    return held


async def wait_released(
    client: redis.Redis, budget_prefix: str, key_id: str, timeout: float
) -> tuple[int, float]:
    """The limited key's held reservations once none are left or ``timeout`` passed, and
    how long that took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        held = await held_reservations(client, budget_prefix, key_id)
        if not held or loop.time() - began > timeout:
            return held, loop.time() - began
        await asyncio.sleep(0.5)
