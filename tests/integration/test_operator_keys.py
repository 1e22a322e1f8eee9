"""Operator keys in a real Postgres: the bootstrap command, scopes, expiry and revocation,
through the real metering server where an operator would use them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import Unauthenticated
from switchboard_core.key_format import hash_secret
from switchboard_metering.operators import OperatorKeyStore
from tests.integration.test_metering_app import (
    Metering,
    field_violations,
    running_metering,
    test_settings,
)


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    async with running_metering(database_url, redis_url, test_settings(redis_prefix)) as running:
        yield running


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert created is not None
    yield created
    await created.close()


def test_the_bootstrap_command_prints_a_working_key_once(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard_metering", "create-operator-key",
         "--name", "first", "--scope", "*", "--expires-in-days", "1"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    assert lines["secret"].strip().startswith("sk-sb-op-")
    assert lines["scopes"].strip() == "*"
    assert lines["secret"].strip() not in result.stderr  # logged nowhere else


def test_the_bootstrap_command_refuses_unknown_scopes(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard_metering", "create-operator-key", "--scope", "root"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown scope 'root'" in result.stderr


async def test_only_the_hash_is_stored_and_verify_checks_expiry_and_revocation(
    pool: asyncpg.Pool,
) -> None:
    store = OperatorKeyStore(pool)
    key, secret = await store.create("ops", ["keys:read"], expires_at=None, granter=None)
    row = await pool.fetchrow("SELECT * FROM operator_keys WHERE id = $1", key.id)
    assert row is not None
    assert secret not in [str(v) for v in row.values()]
    assert row["secret_sha256"] == hash_secret(secret)
    assert (await store.verify(secret)).id == key.id

    await pool.execute(
        "UPDATE operator_keys SET expires_at = now() - interval '1 second' WHERE id = $1", key.id
    )
    with pytest.raises(Unauthenticated):
        await store.verify(secret)

    other, other_secret = await store.create("ops", ["keys:read"], expires_at=None, granter=None)
    first = await store.revoke(other.id)
    again = await store.revoke(other.id)
    assert first.revoke_time == again.revoke_time  # revoking twice keeps the first time
    with pytest.raises(Unauthenticated):
        await store.verify(other_secret)
    with pytest.raises(Unauthenticated):
        await store.verify("sk-sb-v1-" + other_secret[9:])  # an API key's prefix is not one


async def test_bad_requests_name_their_fields(metering: Metering) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    request = metering_pb2.CreateOperatorKeyRequest(
        name="x" * 200, scopes=["keys:read", "everything"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.stub.CreateOperatorKey(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["name"]
    request.name = "ok"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.stub.CreateOperatorKey(request)
    assert field_violations(caught.value) == ["scopes[1]"]
    request.scopes[:] = ["keys:read"]
    request.expire_time.FromDatetime(past)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.stub.CreateOperatorKey(request)
    assert field_violations(caught.value) == ["expire_time"]


async def test_listing_pages_newest_first(metering: Metering) -> None:
    made = []
    for index in range(3):
        reply = await metering.stub.CreateOperatorKey(
            metering_pb2.CreateOperatorKeyRequest(name=f"page-{index}", scopes=["audit:read"])
        )
        made.append(reply.operator_key.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await metering.stub.ListOperatorKeys(
            metering_pb2.ListOperatorKeysRequest(page_size=2, page_token=token)
        )
        seen += [key.id for key in page.operator_keys]
        token = page.next_page_token
        if not token:
            break
    assert [k for k in seen if k in made] == list(reversed(made))
    assert all(not key.startswith("sk-") for key in seen)
