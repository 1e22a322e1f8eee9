"""The audit log against real Postgres: every admin RPC of metering and the catalog writes
exactly one event (caller, RPC, target, change, never a secret), failed calls write none, the
table refuses UPDATE, DELETE and TRUNCATE, and ``ListAuditEvents`` filters and pages."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format

from switchboard.audit.v1 import audit_pb2, audit_pb2_grpc
from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_catalog.testing import RunningCatalog
from switchboard_core.key_format import hash_secret
from switchboard_core.paging import encode_token
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.operators import bootstrap_operator_key
from tests.integration.test_metering_app import Metering, running_metering, test_settings
from tests.secure import admin_key, operator_channel, secure_catalog

METERING = "/switchboard.metering.v1.MeteringService/"
CATALOG = "/switchboard.catalog.v1.CatalogService/"


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    async with running_metering(database_url, redis_url, test_settings(redis_prefix)) as running:
        yield running


@pytest.fixture(scope="module")
async def catalog(database_url: str) -> AsyncIterator[RunningCatalog]:
    async with secure_catalog(database_url, version_poll_seconds=60) as running:
        yield running


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def operator_id(db: asyncpg.Connection, secret: str) -> str:
    key_id = await db.fetchval(
        "SELECT id FROM operator_keys WHERE secret_sha256 = $1", hash_secret(secret)
    )
    assert isinstance(key_id, str)
    return key_id


def rid() -> tuple[tuple[str, str]]:
    """Metadata with a fresh request id, by which a call's events are found."""
    return (("x-request-id", f"audit-{uuid.uuid4().hex}"),)


async def events_of(db: asyncpg.Connection, metadata: tuple[tuple[str, str]]) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT *, change::text AS change_text FROM audit_events WHERE request_id = $1",
            metadata[0][1],
        )
    )


async def only_event(db: asyncpg.Connection, metadata: tuple[tuple[str, str]]) -> Any:
    (event,) = await events_of(db, metadata)
    return event


def change_of(event: Any) -> dict[str, Any]:
    change: dict[str, Any] = json.loads(event["change_text"])
    return change


async def test_every_metering_admin_rpc_writes_one_event_without_secrets(
    metering: Metering, db: asyncpg.Connection
) -> None:
    stub = metering.stub
    actor = f"operator:{await operator_id(db, metering.admin_key)}"
    account = f"audit-{uuid.uuid4().hex[:8]}"

    created = rid()
    key = await stub.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id=account, name="ci"), metadata=created
    )
    limits = rid()
    await stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=key.api_key.id, limits=metering_pb2.SpendLimits(daily_usd="5")
        ),
        metadata=limits,
    )
    credits = rid()
    await stub.AddCredits(
        metering_pb2.AddCreditsRequest(account_id=account, amount_usd="12.50", note="inv-1"),
        metadata=credits,
    )
    revoked = rid()
    await stub.RevokeApiKey(
        metering_pb2.RevokeApiKeyRequest(key_id=key.api_key.id), metadata=revoked
    )
    operator_created = rid()
    operator = await stub.CreateOperatorKey(
        metering_pb2.CreateOperatorKeyRequest(name="auditor", scopes=["audit:read"]),
        metadata=operator_created,
    )
    operator_revoked = rid()
    await stub.RevokeOperatorKey(
        metering_pb2.RevokeOperatorKeyRequest(key_id=operator.operator_key.id),
        metadata=operator_revoked,
    )

    expected = [
        (created, "CreateApiKey", f"api_key:{key.api_key.id}"),
        (limits, "SetKeyLimits", f"api_key:{key.api_key.id}"),
        (credits, "AddCredits", f"account:{account}"),
        (revoked, "RevokeApiKey", f"api_key:{key.api_key.id}"),
        (operator_created, "CreateOperatorKey", f"operator_key:{operator.operator_key.id}"),
        (operator_revoked, "RevokeOperatorKey", f"operator_key:{operator.operator_key.id}"),
    ]
    changes = {}
    for metadata, name, target in expected:
        event = await only_event(db, metadata)
        assert (event["service"], event["actor"], event["rpc"], event["target"]) == (
            "metering",
            actor,
            METERING + name,
            target,
        )
        changes[name] = change_of(event)

    assert changes["CreateApiKey"]["result"] == {
        "api_key": {
            "id": key.api_key.id,
            "account_id": account,
            "name": "ci",
            "prefix": key.api_key.prefix,
        }
    }
    assert changes["SetKeyLimits"]["request"]["limits"]["daily_usd"] == "5"
    assert changes["AddCredits"]["request"]["amount_usd"] == "12.50"
    assert changes["AddCredits"]["request"]["note"] == "inv-1"
    assert changes["AddCredits"]["result"] == {"duplicate": False}
    assert changes["CreateOperatorKey"]["result"]["operator_key"] == {
        "id": operator.operator_key.id,
        "name": "auditor",
        "scopes": ["audit:read"],
        "prefix": operator.operator_key.prefix,
    }

    # No secret anywhere in the table, in any column.
    for secret in (key.secret, operator.secret, metering.admin_key):
        leaks = await db.fetchval(
            "SELECT count(*) FROM audit_events a WHERE strpos(a::text, $1) > 0", secret
        )
        assert leaks == 0


async def test_catalog_writes_are_audited_by_the_catalog(
    catalog: RunningCatalog, db: asyncpg.Connection, database_url: str
) -> None:
    actor = f"operator:{await operator_id(db, await admin_key(database_url))}"
    suffix = uuid.uuid4().hex[:8]
    provider = catalog_pb2.Provider(
        id=f"audit-{suffix}",
        display_name="Audited",
        api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
        base_url="https://llm.example.com/v1",
    )
    model = catalog_pb2.Model(
        id=f"sbtest/audit-{suffix}",
        display_name="Audited model",
        description="d" * 4000,
        context_length=4096,
        input_modalities=["text"],
        output_modalities=["text"],
    )
    endpoint = catalog_pb2.Endpoint(
        model_id=model.id,
        provider_id=provider.id,
        upstream_model="m",
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1.50", completion_usd_per_mtok="2"),
        context_length=4096,
    )
    calls = [rid(), rid(), rid()]
    await catalog.stub.UpsertProvider(
        catalog_pb2.UpsertProviderRequest(provider=provider), metadata=calls[0]
    )
    await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model), metadata=calls[1])
    await catalog.stub.UpsertEndpoint(
        catalog_pb2.UpsertEndpointRequest(endpoint=endpoint), metadata=calls[2]
    )
    expected = [
        ("UpsertProvider", f"provider:{provider.id}"),
        ("UpsertModel", f"model:{model.id}"),
        ("UpsertEndpoint", f"endpoint:{provider.id}:{model.id}"),
    ]
    for metadata, (name, target) in zip(calls, expected, strict=True):
        event = await only_event(db, metadata)
        assert (event["service"], event["actor"], event["rpc"], event["target"]) == (
            "catalog",
            actor,
            CATALOG + name,
            target,
        )
    model_change = change_of(await only_event(db, calls[1]))["request"]["model"]
    assert model_change["description"] == "d" * 4000  # kept whole
    endpoint_change = change_of(await only_event(db, calls[2]))["request"]["endpoint"]
    assert endpoint_change["pricing"]["prompt_usd_per_mtok"] == "1.50"


async def test_refused_and_failed_calls_write_nothing(
    metering: Metering, db: asyncpg.Connection, database_url: str
) -> None:
    invalid = rid()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await metering.stub.AddCredits(
            metering_pb2.AddCreditsRequest(account_id="acme", amount_usd="-5"), metadata=invalid
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = rid()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await metering.stub.RevokeApiKey(
            metering_pb2.RevokeApiKeyRequest(key_id="key_nobody"), metadata=missing
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    refused = rid()
    reader = await admin_key(database_url, ("usage:read",))
    async with operator_channel(metering.address, reader) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await metering_pb2_grpc.MeteringServiceStub(channel).AddCredits(
                metering_pb2.AddCreditsRequest(account_id="acme", amount_usd="5"),
                metadata=refused,
            )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for metadata in (invalid, missing, refused):
        assert await events_of(db, metadata) == []


async def test_a_write_the_audit_log_could_not_show_is_refused_before_it_is_made(
    catalog: RunningCatalog, db: asyncpg.Connection
) -> None:
    """An output-only Timestamp out of range (nanos -1) was ignored by the catalog, which made
    the change, and refused by proto JSON, so no event was written (found by
    tests/e2e/test_fuzz.py). Every server now refuses such a Timestamp before the handler."""
    model = catalog_pb2.Model(
        id=f"sbtest/unshown-{uuid.uuid4().hex[:8]}",
        display_name="Unshown",
        context_length=8192,
        input_modalities=["text"],
        output_modalities=["text"],
    )
    model.update_time.nanos = -1
    metadata = rid()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await catalog.stub.UpsertModel(
            catalog_pb2.UpsertModelRequest(model=model), metadata=metadata
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model.update_time" in (error.value.details() or "")
    assert await db.fetchval("SELECT count(*) FROM models WHERE id = $1", model.id) == 0
    assert await events_of(db, metadata) == []


async def test_the_table_is_append_only(metering: Metering, db: asyncpg.Connection) -> None:
    await metering.stub.AddCredits(
        metering_pb2.AddCreditsRequest(account_id="append-only", amount_usd="1")
    )
    before = await db.fetchval("SELECT count(*) FROM audit_events")
    for statement in (
        "UPDATE audit_events SET actor = 'someone else'",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE false",  # refused even when it matches nothing
        "TRUNCATE audit_events",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM audit_events") == before
    assert await db.fetchval("SELECT count(*) FROM audit_events WHERE actor = 'someone else'") == 0


def amount(event: audit_pb2.AuditEvent) -> str:
    change: dict[str, Any] = json_format.MessageToDict(event.change)
    return str(change["request"]["amount_usd"])


async def test_list_audit_events_filters_and_pages_newest_first(
    metering: Metering, catalog: RunningCatalog, db: asyncpg.Connection
) -> None:
    account = f"audit-list-{uuid.uuid4().hex[:8]}"
    for usd in ("1", "2", "3"):
        await metering.stub.AddCredits(
            metering_pb2.AddCreditsRequest(account_id=account, amount_usd=usd)
        )
    await metering.stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account))
    audit = audit_pb2_grpc.AuditServiceStub(metering.channel)

    first = await audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(target=account, rpc="AddCredits", page_size=2)
    )
    assert [amount(e) for e in first.events] == ["3", "2"]
    assert first.next_page_token
    second = await audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(
            target=f"account:{account}", rpc="AddCredits", page_size=2,
            page_token=first.next_page_token,
        )
    )  # fmt: skip
    assert [amount(e) for e in second.events] == ["1"]
    assert second.next_page_token == ""
    assert first.events[0].id > first.events[1].id > second.events[0].id
    event = first.events[0]
    assert event.service == "metering" and event.rpc == METERING + "AddCredits"
    assert event.HasField("occur_time")

    actor = f"operator:{await operator_id(db, metering.admin_key)}"
    everything = await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(target=account))
    assert len(everything.events) == 3  # the new key's target is the key, not the account
    by_actor = await audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(target=account, actor=actor.partition(":")[2])
    )
    assert len(by_actor.events) == 3
    nobody = await audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(target=account, actor="operator:opk_nobody")
    )
    assert list(nobody.events) == []
    full_rpc = await audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(rpc=METERING + "AddCredits", target=account)
    )
    assert len(full_rpc.events) == 3

    window = audit_pb2.ListAuditEventsRequest(target=account)
    window.start_time.CopyFrom(event.occur_time)
    assert len((await audit.ListAuditEvents(window)).events) >= 1
    window.end_time.CopyFrom(event.occur_time)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await audit.ListAuditEvents(window)  # start must be before end
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    earlier = audit_pb2.ListAuditEventsRequest(target=account)
    earlier.end_time.CopyFrom(first.events[-1].occur_time)
    assert all(e.id < first.events[-1].id for e in (await audit.ListAuditEvents(earlier)).events)

    # Tokens that are not ids: garbage, and numbers past a bigint (Postgres refused the query
    # and the call answered INTERNAL; tests/e2e/test_fuzz.py sends such tokens too).
    for token in ("not-a-token", encode_token("9" * 20), encode_token("0"), encode_token("-1")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_token=token))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token

    # The catalog shares the database here, and lists only its own events.
    catalog_audit = audit_pb2_grpc.AuditServiceStub(catalog.channel)
    theirs = await catalog_audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(target=account))
    assert list(theirs.events) == []
    listed = await catalog_audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=50))
    assert {e.service for e in listed.events} <= {"catalog"}
    as_json = json_format.MessageToDict(event)
    assert as_json["change"]["request"]["account_id"] == account


async def test_listing_needs_audit_read(metering: Metering, database_url: str) -> None:
    writer = await admin_key(database_url, ("credits:write", "keys:write"))
    async with operator_channel(metering.address, writer) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
                audit_pb2.ListAuditEventsRequest()
            )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reader = await admin_key(database_url, ("audit:read",))
    async with operator_channel(metering.address, reader) as channel:
        await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_size=1)
        )


async def test_a_bootstrapped_operator_key_is_audited(
    database_url: str, db: asyncpg.Connection
) -> None:
    key, secret = await bootstrap_operator_key(database_url, MIGRATIONS, "break-glass", ["*"])
    (event,) = await db.fetch(
        "SELECT *, change::text AS change_text, a::text AS row FROM audit_events a"
        " WHERE target = $1",
        f"operator_key:{key.id}",
    )
    assert (event["service"], event["actor"], event["rpc"]) == (
        "metering",
        "bootstrap",
        "command:create-operator-key",
    )
    assert change_of(event)["request"]["scopes"] == ["*"]
    assert change_of(event)["result"]["operator_key"]["id"] == key.id
    assert secret not in event["row"]


async def test_a_grant_that_fails_after_it_was_committed_is_audited_as_failed(
    database_url: str, redis_prefix: str, db: asyncpg.Connection
) -> None:
    """With Redis unreachable, AddCredits commits the grant and then fails: the event says
    so, since the credit was added."""
    account = f"audit-redis-down-{uuid.uuid4().hex[:8]}"
    dead_redis = "redis://127.0.0.1:1/0"
    async with running_metering(database_url, dead_redis, test_settings(redis_prefix)) as down:
        metadata = rid()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await down.stub.AddCredits(
                metering_pb2.AddCreditsRequest(account_id=account, amount_usd="7"),
                metadata=metadata,
            )
        assert error.value.code() == grpc.StatusCode.INTERNAL
    granted = await db.fetchval(
        "SELECT sum(amount) FROM credit_grants WHERE account_id = $1", account
    )
    assert str(granted) == "7"
    event = await only_event(db, metadata)
    assert event["target"] == f"account:{account}"
    assert change_of(event)["failed"] == "INTERNAL"
    assert change_of(event)["request"]["amount_usd"] == "7"
