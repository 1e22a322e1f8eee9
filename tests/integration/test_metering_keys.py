"""API keys over gRPC: create, list (paged), revoke, verify; only hashes are stored."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from switchboard.metering.v1 import metering_pb2
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
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def new_account() -> str:
    return f"acct-{uuid.uuid4().hex[:12]}"


async def create(
    metering: Metering, account: str, name: str = "k"
) -> metering_pb2.CreateApiKeyResponse:
    return await metering.stub.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id=account, name=name)
    )


async def test_create_returns_the_secret_once_and_stores_only_its_hash(
    metering: Metering, db: asyncpg.Connection
) -> None:
    account = new_account()
    created = await create(metering, account, "ci")
    key, secret = created.api_key, created.secret
    assert secret.startswith("sk-sb-v1-")
    assert key.id.startswith("key_") and len(key.id) == 20
    assert key.prefix == secret[:14]
    assert (key.account_id, key.name) == (account, "ci")
    assert key.HasField("create_time") and not key.HasField("revoke_time")

    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account) == 1
    stored = await db.fetchval("SELECT secret_sha256 FROM api_keys WHERE id = $1", key.id)
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    every_row = await db.fetch("SELECT row_to_json(k)::text AS row FROM api_keys k")
    assert all(secret not in row["row"] and secret[14:] not in row["row"] for row in every_row)


async def test_second_key_reuses_the_account(metering: Metering, db: asyncpg.Connection) -> None:
    account = new_account()
    first, second = await create(metering, account), await create(metering, account)
    assert first.api_key.id != second.api_key.id and first.secret != second.secret
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account) == 1


async def test_concurrent_first_keys_of_an_account(
    metering: Metering, db: asyncpg.Connection
) -> None:
    account = new_account()
    created = await asyncio.gather(*(create(metering, account) for _ in range(10)))
    assert len({c.api_key.id for c in created}) == 10
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", account) == 1


@pytest.mark.parametrize(
    ("account", "name", "field"),
    [
        ("", "k", "account_id"),
        ("bad id!", "k", "account_id"),
        ("a" * 65, "k", "account_id"),
        ("ok", "n" * 129, "name"),
    ],
)
async def test_create_rejects_bad_input_naming_the_field(
    metering: Metering, account: str, name: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(metering, account, name)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]


async def test_list_pages_newest_first(metering: Metering) -> None:
    account = new_account()
    made = [(await create(metering, account, f"k{i}")).api_key.id for i in range(5)]
    await create(metering, new_account())  # another account's key never shows up
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = await metering.stub.ListApiKeys(
            metering_pb2.ListApiKeysRequest(account_id=account, page_size=2, page_token=token)
        )
        assert len(page.api_keys) <= 2
        seen += [key.id for key in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))

    everything = await metering.stub.ListApiKeys(
        metering_pb2.ListApiKeysRequest(account_id=account)
    )
    assert [key.id for key in everything.api_keys] == seen
    assert everything.next_page_token == ""


@pytest.mark.parametrize("token", ["%%%", "bm90IGEgY3Vyc29y"])
async def test_list_rejects_a_forged_page_token(metering: Metering, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.stub.ListApiKeys(
            metering_pb2.ListApiKeysRequest(account_id=new_account(), page_token=token)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["page_token"]


async def test_verify_then_revoke(metering: Metering) -> None:
    created = await create(metering, new_account())
    verified = await metering.router.VerifyApiKey(
        metering_pb2.VerifyApiKeyRequest(secret=created.secret)
    )
    assert verified.api_key == created.api_key

    first = await metering.stub.RevokeApiKey(
        metering_pb2.RevokeApiKeyRequest(key_id=created.api_key.id)
    )
    assert first.api_key.HasField("revoke_time")
    again = await metering.stub.RevokeApiKey(
        metering_pb2.RevokeApiKeyRequest(key_id=created.api_key.id)
    )
    assert again.api_key.revoke_time == first.api_key.revoke_time

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.router.VerifyApiKey(metering_pb2.VerifyApiKeyRequest(secret=created.secret))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_revoke_unknown_key_is_not_found(metering: Metering) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.stub.RevokeApiKey(
            metering_pb2.RevokeApiKeyRequest(key_id="key_0000000000000000")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "secret",
    ["", "nonsense", "sk-sb-v1-short", "sk-sb-v1-" + "A" * 43, "sk-sb-v2-" + "A" * 43],
)
async def test_verify_fails_the_same_way_for_every_bad_secret(
    metering: Metering, secret: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.router.VerifyApiKey(metering_pb2.VerifyApiKeyRequest(secret=secret))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "invalid API key"
