"""API keys: creation, listing, revocation and verification.

A secret is ``sk-sb-v1-`` followed by ``secrets.token_urlsafe(32)``. It is returned once, by
:meth:`KeyStore.create`; only its sha256 (hex) is stored. Secrets are never logged.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from datetime import datetime
from decimal import Decimal

import asyncpg

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from switchboard_core.money import MoneyFormatError, format_usd, parse_usd
from switchboard_core.paging import decode_token, encode_token, page_size

log = logging.getLogger(__name__)

SECRET_PREFIX = "sk-sb-v1-"
SHOWN_PREFIX_LENGTH = 14
MAX_NAME_LENGTH = 128
# token_urlsafe(32) is 43 characters of the URL-safe base64 alphabet.
_SECRET = re.compile(r"sk-sb-v1-[A-Za-z0-9_-]{43}")
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_INVALID_KEY = "invalid API key"

_COLUMNS = """id, account_id, name, prefix, created_at, revoked_at,
    limit_total, limit_daily, limit_monthly,
    coalesce((SELECT prepaid FROM accounts a WHERE a.id = api_keys.account_id), false) AS prepaid"""
LIMIT_FIELDS = (
    ("total_usd", "limit_total"),
    ("daily_usd", "limit_daily"),
    ("monthly_usd", "limit_monthly"),
)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def shown_prefix(secret: str) -> str:
    return secret[:SHOWN_PREFIX_LENGTH]


def is_well_formed(secret: str) -> bool:
    return bool(_SECRET.fullmatch(secret))


def validate_account_id(account_id: str) -> None:
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise InvalidArgument({"account_id": "1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'"})


def validate_name(name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument({"name": f"at most {MAX_NAME_LENGTH} characters"})


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


def _encode_cursor(row: asyncpg.Record) -> str:
    return encode_token(f"{row['created_at'].isoformat()}|{row['id']}")


def _decode_cursor(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    # decode_token skips characters outside the base64 alphabet, so garbage can decode to "".
    created, sep, key_id = decode_token(token).partition("|")
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        when = None
    if not sep or not key_id or when is None or when.tzinfo is None:
        raise InvalidArgument({"page_token": "not a token from a previous response"})
    return when, key_id


class KeyStore:
    """API keys in Postgres (tables ``accounts`` and ``api_keys``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, account_id: str, name: str) -> tuple[metering_pb2.ApiKey, str]:
        """Create a key (and its account when missing); returns the key and its secret."""
        validate_account_id(account_id)
        validate_name(name)
        secret = new_secret()
        # One statement: the account insert is visible to the key's foreign key check,
        # which runs at the end of the statement.
        row = await self._pool.fetchrow(
            f"""WITH account AS (
                    INSERT INTO accounts (id) VALUES ($2) ON CONFLICT (id) DO NOTHING)
                INSERT INTO api_keys (id, account_id, name, secret_sha256, prefix)
                VALUES ($1, $2, $3, $4, $5)
                RETURNING {_COLUMNS}""",
            new_key_id(),
            account_id,
            name,
            hash_secret(secret),
            shown_prefix(secret),
        )
        assert row is not None
        log.info("api key created", extra={"key_id": row["id"], "account_id": account_id})
        return _to_proto(row), secret

    async def list_page(
        self, account_id: str, requested_size: int, page_token: str
    ) -> tuple[list[metering_pb2.ApiKey], str]:
        """One page of an account's keys, newest first, and the next page's token."""
        validate_account_id(account_id)
        size = page_size(requested_size)
        cursor = _decode_cursor(page_token)
        if cursor is None:
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM api_keys WHERE account_id = $1
                    ORDER BY created_at DESC, id DESC LIMIT $2""",
                account_id,
                size + 1,
            )
        else:
            rows = await self._pool.fetch(
                f"""SELECT {_COLUMNS} FROM api_keys
                    WHERE account_id = $1 AND (created_at, id) < ($3, $4)
                    ORDER BY created_at DESC, id DESC LIMIT $2""",
                account_id,
                size + 1,
                *cursor,
            )
        page = rows[:size]
        next_token = _encode_cursor(page[-1]) if len(rows) > size else ""
        return [_to_proto(row) for row in page], next_token

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
            raise NotFound(f"API key {key_id!r} not found")
        log.info("api key revoked", extra={"key_id": key_id})
        return _to_proto(row)

    async def set_limits(
        self, key_id: str, limits: metering_pb2.SpendLimits
    ) -> metering_pb2.ApiKey:
        if not key_id:
            raise InvalidArgument({"key_id": "required"})
        values = parse_limits(limits)
        row = await self._pool.fetchrow(
            f"""UPDATE api_keys SET limit_total = $2, limit_daily = $3, limit_monthly = $4
                WHERE id = $1 AND revoked_at IS NULL RETURNING {_COLUMNS}""",
            key_id,
            *values,
        )
        if row is None:
            if await self._pool.fetchval("SELECT true FROM api_keys WHERE id = $1", key_id):
                raise FailedPrecondition(
                    f"API key {key_id!r} is revoked: its limits can no longer change",
                    reason="API_KEY_REVOKED",
                )
            raise NotFound(f"API key {key_id!r} not found")
        log.info("api key limits set", extra={"key_id": key_id})
        return _to_proto(row)

    async def get(self, key_id: str) -> metering_pb2.ApiKey:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None:
            raise NotFound(f"API key {key_id!r} not found")
        return _to_proto(row)

    async def verify(self, secret: str) -> metering_pb2.ApiKey:
        """The active key with this secret; UNAUTHENTICATED otherwise, without saying why."""
        if not is_well_formed(secret):
            raise Unauthenticated(_INVALID_KEY)
        row = await self._pool.fetchrow(
            f"""SELECT {_COLUMNS} FROM api_keys
                WHERE secret_sha256 = $1 AND revoked_at IS NULL""",
            hash_secret(secret),
        )
        if row is None:
            raise Unauthenticated(_INVALID_KEY)
        return _to_proto(row)
