"""API keys: creation, listing, revocation and verification.

A secret is ``sk-sb-v1-`` followed by ``secrets.token_urlsafe(32)``. It is returned once, by
:meth:`KeyStore.create`; only its sha256 (hex) is stored. Secrets are never logged.

A key may expire (``expires_at``; from then on :meth:`KeyStore.verify` answers
``UNAUTHENTICATED`` with reason ``API_KEY_EXPIRED``) and may be limited to some models and
providers (``allowed_models``, ``allowed_providers``; NULL means any). Metering stores and
returns the allow-lists; routers enforce them (``switchboard_router.key_rules``).

Rate limits, the key's own (``rate_*`` columns of ``api_keys``) and its account's (the same
columns of ``accounts``, set by :mod:`switchboard_metering.account_limits`), travel the same
way: every ApiKey this module returns carries both, and routers enforce them in Redis
(:mod:`switchboard_core.rate_limits`). An ApiKey's ``rate_limits`` and
``account_rate_limits`` are set only when at least one of their limits is, as ``limits`` is
for spend.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from switchboard.metering.v1 import metering_pb2
from switchboard_core.auth import actor
from switchboard_core.catalog_ids import MODEL_VARIANTS, model_id_problem, provider_id_problem
from switchboard_core.db import fetchrow_within
from switchboard_core.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from switchboard_core.key_format import (
    INFERENCE_PREFIX,
    KeyKind,
    hash_secret,
    kind_of,
    shown_prefix,
)
from switchboard_core.key_format import new_secret as _new_secret
from switchboard_core.money import MoneyFormatError, format_usd, parse_usd
from switchboard_core.paging import decode_token, encode_token, page_size
from switchboard_core.rate_limits import RateLimits

log = logging.getLogger(__name__)

SECRET_PREFIX = INFERENCE_PREFIX
MAX_NAME_LENGTH = 128
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_INVALID_KEY = "invalid API key"
DEFAULT_VERIFY_TIMEOUT_SECONDS = 0.5
# How many models, and providers, one key's allow-list may name.
MAX_ALLOWED = 64

# A key's or an account's rate limits, in RateLimits field order (migration 0008).
RATE_COLUMNS = ("rate_requests_per_minute", "rate_tokens_per_minute", "rate_max_concurrent")
_COLUMNS = f"""id, account_id, name, prefix, created_at, revoked_at,
    limit_total, limit_daily, limit_monthly, expires_at, allowed_models, allowed_providers,
    {", ".join(RATE_COLUMNS)},
    coalesce((SELECT prepaid FROM accounts a WHERE a.id = api_keys.account_id), false) AS prepaid,
    (SELECT ARRAY[{", ".join(f"a.{c}" for c in RATE_COLUMNS)}] FROM accounts a
     WHERE a.id = api_keys.account_id) AS account_rates"""
LIMIT_FIELDS = (
    ("total_usd", "limit_total"),
    ("daily_usd", "limit_daily"),
    ("monthly_usd", "limit_monthly"),
)


def new_secret() -> str:
    return _new_secret(KeyKind.INFERENCE)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def is_well_formed(secret: str) -> bool:
    return kind_of(secret) is KeyKind.INFERENCE


def account_id_problem(account_id: str) -> str | None:
    if not _ACCOUNT_ID.fullmatch(account_id):
        return "1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
    return None


def validate_account_id(account_id: str) -> None:
    if (problem := account_id_problem(account_id)) is not None:
        raise InvalidArgument({"account_id": problem})


def validate_name(name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument({"name": f"at most {MAX_NAME_LENGTH} characters"})


def key_not_found(key_id: str) -> NotFound:
    """The answer for a key that does not exist, and for one a tenant may not see: the two
    must not be told apart."""
    return NotFound(f"API key {key_id!r} not found")


def account_not_found(account_id: str) -> NotFound:
    return NotFound(f"account {account_id!r} not found")


def _allow_list(
    field: str, values: Sequence[str], check: Callable[[str], str | None]
) -> tuple[list[str] | None, list[tuple[str, str]]]:
    """The allow-list to store (None: any) and its problems, each naming its index."""
    problems: list[tuple[str, str]] = []
    if len(values) > MAX_ALLOWED:
        return None, [(field, f"at most {MAX_ALLOWED} entries")]
    seen: set[str] = set()
    for index, value in enumerate(values):
        problem = check(value)
        if problem is None and value in seen:
            problem = "listed twice"
        if problem is not None:
            problems.append((f"{field}[{index}]", problem))
        seen.add(value)
    return (list(values) or None), problems


def _allowed_model_problem(model_id: str) -> str | None:
    problem = model_id_problem(model_id)
    if problem is None and model_id.rpartition(":")[2] in MODEL_VARIANTS:
        return "a model id without a ':floor' or ':nitro' variant (its variants are allowed)"
    return problem


def check_key_rules(
    expires_at: datetime | None,
    allowed_models: Sequence[str],
    allowed_providers: Sequence[str],
    now: datetime | None = None,
) -> tuple[list[str] | None, list[str] | None]:
    """The allow-lists to store (None: any); INVALID_ARGUMENT naming every bad field."""
    problems: list[tuple[str, str]] = []
    if expires_at is not None and expires_at <= (now or datetime.now(UTC)):
        problems.append(("expire_time", "must be in the future"))
    models, bad = _allow_list("allowed_models", allowed_models, _allowed_model_problem)
    problems += bad
    providers, bad = _allow_list("allowed_providers", allowed_providers, provider_id_problem)
    problems += bad
    if problems:
        raise InvalidArgument(problems)
    return models, providers


def rate_limits_of(values: Sequence[int] | None) -> RateLimits:
    """The limits in :data:`RATE_COLUMNS` order; none for a missing row (NULL)."""
    return RateLimits(*values) if values is not None else RateLimits()


def _set_rate_limits(field: metering_pb2.RateLimits, limits: RateLimits) -> None:
    if limits.enforced:
        field.CopyFrom(limits.to_proto())


def _to_proto(row: asyncpg.Record) -> metering_pb2.ApiKey:
    key = metering_pb2.ApiKey(
        id=row["id"], account_id=row["account_id"], name=row["name"], prefix=row["prefix"]
    )
    key.create_time.FromDatetime(row["created_at"])
    if row["revoked_at"] is not None:
        key.revoke_time.FromDatetime(row["revoked_at"])
    for field, column in LIMIT_FIELDS:
        if row[column] is not None:
            setattr(key.limits, field, format_usd(row[column]))
    key.account_prepaid = row["prepaid"]
    if row["expires_at"] is not None:
        key.expire_time.FromDatetime(row["expires_at"])
    key.allowed_models.extend(row["allowed_models"] or ())
    key.allowed_providers.extend(row["allowed_providers"] or ())
    _set_rate_limits(key.rate_limits, rate_limits_of([row[c] for c in RATE_COLUMNS]))
    _set_rate_limits(key.account_rate_limits, rate_limits_of(row["account_rates"]))
    return key


def parse_limits(limits: metering_pb2.SpendLimits) -> list[Decimal | None]:
    """The limits in column order; INVALID_ARGUMENT naming each bad one."""
    values: list[Decimal | None] = []
    problems: list[tuple[str, str]] = []
    for field, _ in LIMIT_FIELDS:
        text = getattr(limits, field)
        try:
            values.append(parse_usd(text) if text else None)
        except MoneyFormatError as error:
            problems.append((f"limits.{field}", str(error)))
    if problems:
        raise InvalidArgument(problems)
    return values


def encode_cursor(row: asyncpg.Record) -> str:
    return encode_token(f"{row['created_at'].isoformat()}|{row['id']}")


def decode_cursor(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    # decode_token skips characters outside the base64 alphabet, so garbage can decode to "".
    created, sep, key_id = decode_token(token).partition("|")
    try:
        when: datetime | None = datetime.fromisoformat(created).astimezone(UTC)
    except (ValueError, OverflowError):  # also a time Postgres cannot hold, once in UTC
        when = None
    if not sep or not key_id or when is None or not created.endswith("+00:00"):
        raise InvalidArgument({"page_token": "not a token from a previous response"})
    return when, key_id


async def newest_first_page(
    pool: asyncpg.Pool,
    select: str,
    condition: str,
    args: Sequence[Any],
    requested_size: int,
    page_token: str,
) -> tuple[list[asyncpg.Record], str]:
    """One page of a table's rows, newest first by ``(created_at, id)``, and the next page's
    token (:func:`encode_cursor`). ``select`` is ``SELECT <columns> FROM <table>``;
    ``condition`` (may be empty) filters on the parameters ``$1..$n`` given in ``args``."""
    size = page_size(requested_size)
    cursor = decode_cursor(page_token)
    params: list[Any] = [*args, size + 1]
    conditions = [condition] if condition else []
    if cursor is not None:
        conditions.append(f"(created_at, id) < (${len(params) + 1}, ${len(params) + 2})")
        params += cursor
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await pool.fetch(
        f"{select}{where} ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1}", *params
    )
    page = list(rows[:size])
    return page, encode_cursor(page[-1]) if len(rows) > size else ""


class KeyStore:
    """API keys in Postgres (tables ``accounts`` and ``api_keys``)."""

    def __init__(
        self, pool: asyncpg.Pool, *, verify_timeout_seconds: float = DEFAULT_VERIFY_TIMEOUT_SECONDS
    ) -> None:
        self._pool = pool
        # The longest :meth:`verify` waits on Postgres before answering UNAVAILABLE: within
        # the routers' own deadline on VerifyApiKey, so they get an answer, not a timeout.
        self._verify_timeout = verify_timeout_seconds

    @property
    def pool(self) -> asyncpg.Pool:
        """The database of keys and accounts, for the stores of their other columns
        (:class:`switchboard_metering.account_limits.AccountLimits`)."""
        return self._pool

    async def create(
        self,
        account_id: str,
        name: str,
        *,
        expires_at: datetime | None = None,
        allowed_models: Sequence[str] = (),
        allowed_providers: Sequence[str] = (),
    ) -> tuple[metering_pb2.ApiKey, str]:
        """Create a key (and its account when missing); returns the key and its secret."""
        validate_account_id(account_id)
        validate_name(name)
        models, providers = check_key_rules(expires_at, allowed_models, allowed_providers)
        secret = new_secret()
        # One statement: the account insert is visible to the key's foreign key check,
        # which runs at the end of the statement.
        row = await self._pool.fetchrow(
            f"""WITH account AS (
                    INSERT INTO accounts (id) VALUES ($2) ON CONFLICT (id) DO NOTHING)
                INSERT INTO api_keys (id, account_id, name, secret_sha256, prefix,
                                      expires_at, allowed_models, allowed_providers)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                RETURNING {_COLUMNS}""",
            new_key_id(),
            account_id,
            name,
            hash_secret(secret),
            shown_prefix(secret),
            expires_at,
            models,
            providers,
        )
        assert row is not None
        log.info(
            "api key created",
            extra={"key_id": row["id"], "account_id": account_id, "actor": actor()},
        )
        return _to_proto(row), secret

    async def list_page(
        self, account_id: str, requested_size: int, page_token: str
    ) -> tuple[list[metering_pb2.ApiKey], str]:
        """One page of an account's keys, newest first, and the next page's token."""
        validate_account_id(account_id)
        rows, next_token = await newest_first_page(
            self._pool,
            f"SELECT {_COLUMNS} FROM api_keys",
            "account_id = $1",
            [account_id],
            requested_size,
            page_token,
        )
        return [_to_proto(row) for row in rows], next_token

    async def revoke(self, key_id: str) -> metering_pb2.ApiKey:
        """Revoke a key. Revoking again is harmless and keeps the first revoke time."""
        if not key_id:
            raise InvalidArgument({"key_id": "required"})
        row = await self._pool.fetchrow(
            f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                WHERE id = $1 RETURNING {_COLUMNS}""",
            key_id,
        )
        if row is None:
            raise key_not_found(key_id)
        log.info("api key revoked", extra={"key_id": key_id, "actor": actor()})
        return _to_proto(row)

    async def set_limits(
        self,
        key_id: str,
        limits: metering_pb2.SpendLimits,
        rate_limits: RateLimits | None = None,
    ) -> metering_pb2.ApiKey:
        """Replace the key's spend limits and, when ``rate_limits`` is given, its rate limits
        (within their bounds: the caller checked them with
        :func:`switchboard_core.rate_limits.rate_limit_problems`), in one statement."""
        if not key_id:
            raise InvalidArgument({"key_id": "required"})
        values = parse_limits(limits)
        assignments = "limit_total = $2, limit_daily = $3, limit_monthly = $4"
        rates: tuple[int, ...] = ()
        if rate_limits is not None:
            assignments += "".join(f", {c} = ${i}" for i, c in enumerate(RATE_COLUMNS, start=5))
            rates = (
                rate_limits.requests_per_minute,
                rate_limits.tokens_per_minute,
                rate_limits.max_concurrent,
            )
        row = await self._pool.fetchrow(
            f"""UPDATE api_keys SET {assignments}
                WHERE id = $1 AND revoked_at IS NULL RETURNING {_COLUMNS}""",
            key_id,
            *values,
            *rates,
        )
        if row is None:
            raise await self._unchangeable(key_id)
        rate_fields: dict[str, int] = {}
        if rate_limits is not None:
            rate_fields = {
                "requests_per_minute": rate_limits.requests_per_minute,
                "tokens_per_minute": rate_limits.tokens_per_minute,
                "max_concurrent": rate_limits.max_concurrent,
            }
        log.info(
            "api key limits set",
            extra={
                "key_id": key_id,
                "actor": actor(),
                # In USD; "" for no limit.
                **{
                    f"limit_{f}": format_usd(v) if v is not None else ""
                    for (f, _), v in zip(LIMIT_FIELDS, values, strict=True)
                },
                **rate_fields,
            },
        )
        return _to_proto(row)

    async def _unchangeable(self, key_id: str) -> FailedPrecondition | NotFound:
        """Why a change to key ``key_id`` found no active key: revoked, or none at all."""
        if await self._pool.fetchval("SELECT true FROM api_keys WHERE id = $1", key_id):
            return FailedPrecondition(
                f"API key {key_id!r} is revoked: its limits can no longer change",
                reason="API_KEY_REVOKED",
            )
        return key_not_found(key_id)

    async def get(self, key_id: str) -> metering_pb2.ApiKey:
        if not key_id:
            raise InvalidArgument({"key_id": "required"})
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None:
            raise key_not_found(key_id)
        return _to_proto(row)

    async def account_of(self, key_id: str) -> str | None:
        """The account of key ``key_id`` (revoked or not); None when there is no such key."""
        account: str | None = await self._pool.fetchval(
            "SELECT account_id FROM api_keys WHERE id = $1", key_id
        )
        return account

    async def verify(self, secret: str) -> metering_pb2.ApiKey:
        """The active key with this secret; UNAUTHENTICATED otherwise. Only an expired key
        is told why (``API_KEY_EXPIRED``): whoever holds its secret is the one who has to
        get a new key, and an unknown or revoked secret learns nothing. Postgres silent or
        unreachable: UNAVAILABLE (``DATABASE_UNAVAILABLE``) within the verify timeout."""
        if not is_well_formed(secret):
            raise Unauthenticated(_INVALID_KEY)
        row = await fetchrow_within(
            self._pool,
            self._verify_timeout,
            "verifying the API key",
            f"""SELECT {_COLUMNS}, expires_at <= now() AS expired FROM api_keys
                WHERE secret_sha256 = $1 AND revoked_at IS NULL""",
            hash_secret(secret),
        )
        if row is None:
            raise Unauthenticated(_INVALID_KEY)
        if row["expired"]:
            raise Unauthenticated(
                f"API key {row['id']} expired at {row['expires_at'].isoformat()}",
                reason="API_KEY_EXPIRED",
                metadata={"key_id": row["id"]},
            )
        return _to_proto(row)
