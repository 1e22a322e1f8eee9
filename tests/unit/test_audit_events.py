"""What an audited call records (``switchboard_core.audit``), without a database: the event's
actor, target and change, secrets left out, sizes bounded, and a failed write that neither
fails the call nor loses the event's trace."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from switchboard.catalog.v1 import catalog_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.audit import (
    MAX_CHANGE_BYTES,
    MAX_ITEMS,
    MAX_STRING_CHARS,
    AuditEvent,
    Auditor,
    bounded_change,
    event_for,
)
from switchboard_core.auth import OperatorPrincipal, principal_var
from switchboard_core.config import ServerConfig
from switchboard_core.errors import InvalidArgument, NotFound, Unavailable
from switchboard_core.logs import request_id_var
from switchboard_core.rpc_owners import METERING, RPC_OWNERS, Audit
from switchboard_core.server import GrpcServer, Registration

SECRET = "sk-sb-v1-" + "s3cr3t" * 6
CREATE_KEY = f"/{METERING}/CreateApiKey"
ADD_CREDITS = f"/{METERING}/AddCredits"


@pytest.fixture(autouse=True)
def operator() -> Any:
    principal = principal_var.set(OperatorPrincipal("opk_0123", frozenset({"*"})))
    request_id = request_id_var.set("req-1")
    yield
    principal_var.reset(principal)
    request_id_var.reset(request_id)


def _spec(path: str) -> Audit:
    audit = RPC_OWNERS[path].audit
    assert audit is not None
    return audit


def test_a_new_key_is_recorded_by_its_id_and_never_its_secret() -> None:
    request = metering_pb2.CreateApiKeyRequest(account_id="acme", name="ci")
    key = metering_pb2.ApiKey(id="key_1", account_id="acme", name="ci", prefix="sk-sb-v1-AbCd")
    response = metering_pb2.CreateApiKeyResponse(api_key=key, secret=SECRET)
    event = event_for(CREATE_KEY, _spec(CREATE_KEY), request, response)
    assert event.actor == "operator:opk_0123"
    assert event.rpc == CREATE_KEY
    assert event.target == "api_key:key_1"
    assert event.request_id == "req-1"
    # Every request field is shown (other fields of the request, e.g. an expiry, too).
    assert event.change["request"]["account_id"] == "acme"
    assert event.change["request"]["name"] == "ci"
    assert event.change["result"] == {
        "api_key": {
            "id": "key_1",
            "account_id": "acme",
            "name": "ci",
            "prefix": "sk-sb-v1-AbCd",
        }
    }
    assert SECRET not in event.change_json() and "secret" not in event.change_json()


def test_a_credit_grant_is_recorded_with_its_amount() -> None:
    request = metering_pb2.AddCreditsRequest(account_id="acme", amount_usd="25.50", note="inv-7")
    response = metering_pb2.AddCreditsResponse(
        balance=metering_pb2.AccountBalance(account_id="acme", credit_usd="25.50")
    )
    event = event_for(ADD_CREDITS, _spec(ADD_CREDITS), request, response)
    assert event.target == "account:acme"
    assert event.change == {
        "request": {"account_id": "acme", "amount_usd": "25.50", "note": "inv-7", "request_id": ""},
        "result": {"duplicate": False},
    }


def test_redacted_fields_are_left_out_of_the_request() -> None:
    spec = Audit("operator_key", "response.operator_key.id", redact=("secret",))
    request = metering_pb2.VerifyOperatorKeyRequest(secret=SECRET)
    response = metering_pb2.VerifyOperatorKeyResponse(
        operator_key=metering_pb2.OperatorKey(id="opk_9")
    )
    event = event_for("/x.Y/Z", spec, request, response)
    assert event.target == "operator_key:opk_9"
    assert event.change == {"request": {}}


def test_cleared_limits_show_as_empty_amounts() -> None:
    path = f"/{METERING}/SetKeyLimits"
    request = metering_pb2.SetKeyLimitsRequest(
        key_id="key_1", limits=metering_pb2.SpendLimits(daily_usd="5")
    )
    event = event_for(path, _spec(path), request, metering_pb2.SetKeyLimitsResponse())
    assert event.change["request"]["limits"] == {
        "total_usd": "",
        "daily_usd": "5",
        "monthly_usd": "",
    }


def test_a_long_description_is_kept_and_longer_strings_and_lists_are_cut() -> None:
    path = "/switchboard.catalog.v1.CatalogService/UpsertModel"
    model = catalog_pb2.Model(id="acme/m", description="d" * 4000)
    response = catalog_pb2.UpsertModelResponse(model=model)
    event = event_for(path, _spec(path), catalog_pb2.UpsertModelRequest(model=model), response)
    assert event.target == "model:acme/m"
    assert event.change["request"]["model"]["description"] == "d" * 4000

    cut = bounded_change(
        {"request": {"text": "x" * (MAX_STRING_CHARS + 10), "items": list(range(MAX_ITEMS + 5))}}
    )
    assert cut["request"]["text"].startswith("x" * MAX_STRING_CHARS)
    assert cut["request"]["text"].endswith("...[10 more characters]")
    assert cut["request"]["items"][-1] == "...[5 more items]"
    assert len(cut["request"]["items"]) == MAX_ITEMS + 1


def test_a_change_too_large_even_when_cut_is_replaced_by_its_size() -> None:
    huge = {"request": {f"f{i}": "y" * MAX_STRING_CHARS for i in range(MAX_ITEMS)}}
    note = bounded_change(huge)
    assert note["truncated"] is True
    assert note["size_bytes"] > MAX_CHANGE_BYTES
    assert note["request_fields"][:2] == ["f0", "f1"]


class FailingSink:
    async def record(self, event: AuditEvent) -> None:
        raise OSError("connection refused")


class SlowSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        await asyncio.sleep(0.05)
        self.events.append(event)


def _failures(method: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchboard_audit_write_failures_total",
        {"grpc_service": METERING, "grpc_method": method},
    )
    return value or 0.0


async def test_a_failed_write_is_logged_and_counted_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _failures("CreateApiKey")
    request = metering_pb2.CreateApiKeyRequest(account_id="acme")
    response = metering_pb2.CreateApiKeyResponse(
        api_key=metering_pb2.ApiKey(id="key_2", account_id="acme"), secret=SECRET
    )
    with caplog.at_level(logging.ERROR, logger="switchboard_core.audit"):
        await Auditor(FailingSink()).record_call(CREATE_KEY, _spec(CREATE_KEY), request, response)
    assert _failures("CreateApiKey") == before + 1
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.__dict__["target"] == "api_key:key_2"
    assert record.__dict__["actor"] == "operator:opk_0123"
    assert json.loads(record.__dict__["change"])["result"]["api_key"]["id"] == "key_2"
    assert SECRET not in json.dumps(record.__dict__, default=str)


async def test_a_cancelled_call_still_writes_its_event() -> None:
    sink = SlowSink()
    auditor = Auditor(sink)
    request = metering_pb2.AddCreditsRequest(account_id="acme", amount_usd="1")
    call = asyncio.create_task(
        auditor.record_call(
            ADD_CREDITS, _spec(ADD_CREDITS), request, metering_pb2.AddCreditsResponse()
        )
    )
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await auditor.flush()
    assert [event.target for event in sink.events] == ["account:acme"]


async def test_a_server_with_audited_rpcs_and_no_audit_sink_does_not_start() -> None:
    server = GrpcServer(
        config=ServerConfig(service="metering"),
        registrations=[Registration(add=lambda s, g: None, servicer=None, full_name=METERING)],
        authenticator=None,  # type: ignore[arg-type]  # never reached
    )
    with pytest.raises(RuntimeError, match="AddCredits"):
        await server.start(with_metrics=False)


class ListSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


async def test_a_refusal_records_nothing_and_other_failures_record_what_may_have_changed() -> None:
    sink = ListSink()
    auditor = Auditor(sink)
    grant = metering_pb2.AddCreditsRequest(account_id="acme", amount_usd="5")
    for refusal in (InvalidArgument({"amount_usd": "bad"}), NotFound("no such account")):
        await auditor.record_failure(ADD_CREDITS, _spec(ADD_CREDITS), grant, refusal)
    assert sink.events == []

    await auditor.record_failure(ADD_CREDITS, _spec(ADD_CREDITS), grant, OSError("redis down"))
    await auditor.record_failure(ADD_CREDITS, _spec(ADD_CREDITS), grant, Unavailable("later"))
    create = metering_pb2.CreateApiKeyRequest(account_id="acme")
    await auditor.record_failure(CREATE_KEY, _spec(CREATE_KEY), create, RuntimeError("?"))
    assert [(e.target, e.change.get("failed")) for e in sink.events] == [
        ("account:acme", "INTERNAL"),
        ("account:acme", "UNAVAILABLE"),
        ("api_key:unknown", "INTERNAL"),  # only the response would have named the key
    ]
    assert sink.events[0].change["request"]["amount_usd"] == "5"
    assert sink.events[0].actor == "operator:opk_0123"
