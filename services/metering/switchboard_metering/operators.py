"""Operator (management) keys: creation, listing, revocation and verification.

An operator key (``sk-sb-op-``, see :mod:`switchboard_core.key_format`) calls admin RPCs
within its scopes (:class:`switchboard_core.rpc_owners.Scope`; ``*`` holds them all). Only its
sha256 is stored. A caller grants only scopes it holds itself, and only a ``*`` key grants
``*`` or a ``service:<name>`` scope. The first key is made with
``python -m switchboard_metering create-operator-key`` against the database (no caller).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from switchboard.metering.v1 import metering_pb2
from switchboard_core.audit import event_for
from switchboard_core.audit_log import AuditLog, migrate_audit
from switchboard_core.auth import OperatorPrincipal, actor
from switchboard_core.db import create_pool, fetchrow_within, migrate
from switchboard_core.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from switchboard_core.key_format import KeyKind, hash_secret, kind_of, new_secret, shown_prefix
from switchboard_core.rpc_owners import ALL_SCOPES, RPC_OWNERS, known_scope
from switchboard_metering.keys import (
    DEFAULT_VERIFY_TIMEOUT_SECONDS,
    MAX_NAME_LENGTH,
    newest_first_page,
)

log = logging.getLogger(__name__)

MAX_SCOPES = 32
BOOTSTRAP = "bootstrap"
# What the audit log names a key made by the bootstrap command, which is no RPC.
BOOTSTRAP_RPC = "command:create-operator-key"
_CREATE_OPERATOR_KEY = "/switchboard.metering.v1.MeteringService/CreateOperatorKey"
_INVALID = "invalid operator key"
_COLUMNS = "id, name, prefix, scopes, created_at, expires_at, revoked_at, created_by"


def new_operator_key_id() -> str:
    return "opk_" + secrets.token_hex(8)


def _to_proto(row: asyncpg.Record) -> metering_pb2.OperatorKey:
    key = metering_pb2.OperatorKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        scopes=list(row["scopes"]),
        created_by=row["created_by"],
    )
    key.create_time.FromDatetime(row["created_at"])
    if row["expires_at"] is not None:
        key.expire_time.FromDatetime(row["expires_at"])
    if row["revoked_at"] is not None:
        key.revoke_time.FromDatetime(row["revoked_at"])
    return key


def check_scopes(scopes: Sequence[str], granter: OperatorPrincipal | None) -> list[str]:
    """The requested scopes, deduplicated; INVALID_ARGUMENT for unknown ones and
    PERMISSION_DENIED for scopes the granter does not hold (``None``: the bootstrap)."""
    problems: list[tuple[str, str]] = []
    if not scopes:
        problems.append(("scopes", "at least one scope"))
    if len(scopes) > MAX_SCOPES:
        problems.append(("scopes", f"at most {MAX_SCOPES}"))
    for index, scope in enumerate(scopes[:MAX_SCOPES]):
        if not known_scope(scope):
            problems.append((f"scopes[{index}]", f"unknown scope {scope[:64]!r}"))
    if problems:
        raise InvalidArgument(problems)
    if granter is not None and ALL_SCOPES not in granter.scopes:
        missing = sorted(s for s in set(scopes) if not granter.has(s))
        if missing:
            raise PermissionDenied(
                f"an operator key can grant only scopes it holds; this one lacks: "
                f"{', '.join(missing)}",
                reason="SCOPE_NOT_HELD",
                metadata={"scopes": ",".join(missing)},
            )
    return sorted(set(scopes))


class OperatorKeyStore:
    """Operator keys in Postgres (table ``operator_keys``)."""

    def __init__(
        self, pool: asyncpg.Pool, *, verify_timeout_seconds: float = DEFAULT_VERIFY_TIMEOUT_SECONDS
    ) -> None:
        self._pool = pool
        # The longest :meth:`verify` waits on Postgres (acquire and query) before answering
        # UNAVAILABLE: metering's own admin calls and the other services' VerifyOperatorKey.
        self._verify_timeout = verify_timeout_seconds

    async def create(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        expires_at: datetime | None,
        granter: OperatorPrincipal | None,
    ) -> tuple[metering_pb2.OperatorKey, str]:
        """A new key and its secret. ``granter`` is the calling operator (None: bootstrap)."""
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidArgument({"name": f"at most {MAX_NAME_LENGTH} characters"})
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise InvalidArgument({"expire_time": "must be in the future"})
        granted = check_scopes(scopes, granter)
        secret = new_secret(KeyKind.OPERATOR)
        row = await self._pool.fetchrow(
            f"""INSERT INTO operator_keys
                    (id, name, secret_sha256, prefix, scopes, expires_at, created_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}""",
            new_operator_key_id(),
            name,
            hash_secret(secret),
            shown_prefix(secret),
            granted,
            expires_at,
            granter.key_id if granter is not None else BOOTSTRAP,
        )
        assert row is not None
        log.info(
            "operator key created",
            extra={
                "operator_key_id": row["id"],
                "scopes": granted,
                "actor": granter.describe() if granter is not None else BOOTSTRAP,
            },
        )
        return _to_proto(row), secret

    async def list_page(
        self, requested_size: int, page_token: str
    ) -> tuple[list[metering_pb2.OperatorKey], str]:
        """One page of the operator keys, newest first, and the next page's token."""
        rows, next_token = await newest_first_page(
            self._pool, f"SELECT {_COLUMNS} FROM operator_keys", "", [], requested_size, page_token
        )
        return [_to_proto(row) for row in rows], next_token

    async def revoke(self, key_id: str) -> metering_pb2.OperatorKey:
        if not key_id:
            raise InvalidArgument({"key_id": "required"})
        row = await self._pool.fetchrow(
            f"""UPDATE operator_keys SET revoked_at = coalesce(revoked_at, now())
                WHERE id = $1 RETURNING {_COLUMNS}""",
            key_id,
        )
        if row is None:
            raise NotFound(f"operator key {key_id[:64]!r} not found")
        log.info("operator key revoked", extra={"operator_key_id": key_id, "actor": actor()})
        return _to_proto(row)

    async def verify(self, secret: str) -> metering_pb2.OperatorKey:
        """The active (not revoked, not expired) key with this secret; UNAUTHENTICATED
        otherwise, without saying why."""
        if kind_of(secret) is not KeyKind.OPERATOR:
            raise Unauthenticated(_INVALID, reason="OPERATOR_KEY_INVALID")
        row = await fetchrow_within(
            self._pool,
            self._verify_timeout,
            "verifying the key",
            f"""SELECT {_COLUMNS} FROM operator_keys
                WHERE secret_sha256 = $1 AND revoked_at IS NULL
                  AND (expires_at IS NULL OR expires_at > now())""",
            hash_secret(secret),
        )
        if row is None:
            raise Unauthenticated(_INVALID, reason="OPERATOR_KEY_INVALID")
        return _to_proto(row)


async def bootstrap_operator_key(
    database_url: str,
    migrations: str,
    name: str,
    scopes: Sequence[str],
    *,
    expires_at: datetime | None = None,
) -> tuple[metering_pb2.OperatorKey, str]:
    """Create an operator key straight in the database (migrating it first): the path to the
    first operator key, which no caller could have created.

    Audited like ``CreateOperatorKey``, by actor ``"bootstrap"`` and rpc
    :data:`BOOTSTRAP_RPC`. When the event cannot be written this raises before the secret is
    returned, so no usable key is ever made unrecorded."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await migrate(pool, "metering", migrations)
        await migrate_audit(pool)
        key, secret = await OperatorKeyStore(pool).create(
            name, scopes, expires_at=expires_at, granter=None
        )
        request = metering_pb2.CreateOperatorKeyRequest(name=name, scopes=list(scopes))
        if expires_at is not None:
            request.expire_time.FromDatetime(expires_at)
        response = metering_pb2.CreateOperatorKeyResponse(operator_key=key)
        spec = RPC_OWNERS[_CREATE_OPERATOR_KEY].audit
        assert spec is not None
        event = event_for(BOOTSTRAP_RPC, spec, request, response, caller=BOOTSTRAP)
        await AuditLog(pool, "metering").record(event)
        return key, secret
    finally:
        await pool.close()
