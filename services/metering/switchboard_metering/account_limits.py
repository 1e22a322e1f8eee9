"""An account's rate limits (SetAccountLimits): one row of ``accounts``, shared by its keys.

The account must exist already (made by its first key or its first credit grant): setting
limits never creates one, so a mistyped account id is NOT_FOUND rather than a new, empty
account. The limits replace the account's three at once; an empty message removes them.
Every ApiKey metering returns carries its account's (:mod:`switchboard_metering.keys`), and
the routers enforce them in Redis (:mod:`switchboard_core.rate_limits`).
"""

from __future__ import annotations

import logging

import asyncpg

from switchboard.metering.v1 import metering_pb2
from switchboard_core.auth import actor
from switchboard_core.errors import InvalidArgument
from switchboard_core.rate_limits import RateLimits, rate_limit_problems
from switchboard_metering.keys import (
    RATE_COLUMNS,
    account_id_problem,
    account_not_found,
    rate_limits_of,
)

log = logging.getLogger(__name__)

_ASSIGNMENTS = ", ".join(f"{column} = ${i}" for i, column in enumerate(RATE_COLUMNS, start=2))
_SET = f"UPDATE accounts SET {_ASSIGNMENTS} WHERE id = $1 RETURNING {', '.join(RATE_COLUMNS)}"


class AccountLimits:
    """The ``rate_*`` columns of ``accounts``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def set(self, account_id: str, limits: metering_pb2.RateLimits) -> RateLimits:
        """Replace the account's rate limits; returns them as stored. INVALID_ARGUMENT for a
        malformed account id or a limit above its bound (every problem named), NOT_FOUND for
        an account that does not exist."""
        problems = rate_limit_problems(limits, "rate_limits")
        if (problem := account_id_problem(account_id)) is not None:
            problems.insert(0, ("account_id", problem))
        if problems:
            raise InvalidArgument(problems)
        wanted = RateLimits.from_proto(limits)
        row = await self._pool.fetchrow(
            _SET,
            account_id,
            wanted.requests_per_minute,
            wanted.tokens_per_minute,
            wanted.max_concurrent,
        )
        if row is None:
            raise account_not_found(account_id)
        stored = rate_limits_of([row[column] for column in RATE_COLUMNS])
        log.info(
            "account rate limits set",
            extra={
                "account_id": account_id,
                "actor": actor(),
                "requests_per_minute": stored.requests_per_minute,
                "tokens_per_minute": stored.tokens_per_minute,
                "max_concurrent": stored.max_concurrent,
            },
        )
        return stored
