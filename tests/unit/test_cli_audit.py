"""``switchboard audit`` against in-process fake audit logs of the catalog and metering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from switchboard.audit.v1 import audit_pb2, audit_pb2_grpc
from switchboard_cli.audit import summary
from tests.fakes.cli_servers import cli, serving

ADD = audit_pb2_grpc.add_AuditServiceServicer_to_server
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _event(service: str, id_: int, minutes: int, rpc: str, target: str, **change: Any) -> Any:
    event = audit_pb2.AuditEvent(
        id=id_, service=service, actor="operator:opk_0123", rpc=f"/pkg.S/{rpc}", target=target
    )
    event.occur_time.FromDatetime(T0 + timedelta(minutes=minutes))
    event.change.update(change)
    return event


class FakeLog(audit_pb2_grpc.AuditServiceServicer):
    """Serves ``events`` (newest first) two at a time, and keeps the requests."""

    def __init__(self, events: list[audit_pb2.AuditEvent]) -> None:
        self.events = events
        self.requests: list[audit_pb2.ListAuditEventsRequest] = []

    async def ListAuditEvents(
        self,
        request: audit_pb2.ListAuditEventsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> audit_pb2.ListAuditEventsResponse:
        self.requests.append(request)
        start = int(request.page_token or 0)
        end = start + 2
        token = str(end) if end < len(self.events) else ""
        return audit_pb2.ListAuditEventsResponse(
            events=self.events[start:end], next_page_token=token
        )


def _logs() -> tuple[FakeLog, FakeLog]:
    metering = FakeLog(
        [
            _event("metering", 9, 30, "AddCredits", "account:acme",
                   request={"account_id": "acme", "amount_usd": "25", "note": ""},
                   result={"duplicate": False}),
            _event("metering", 8, 10, "CreateApiKey", "api_key:key_1",
                   request={"account_id": "acme", "name": ""},
                   result={"api_key": {"id": "key_1", "prefix": "sk-sb-v1-AbCd"}}),
            _event("metering", 7, 0, "RevokeApiKey", "api_key:key_0", request={"key_id": "key_0"}),
        ]
    )  # fmt: skip
    catalog = FakeLog(
        [
            _event("catalog", 3, 20, "UpsertModel", "model:acme/m",
                   request={"model": {"id": "acme/m", "context_length": 4096}}),
        ]
    )  # fmt: skip
    return metering, catalog


async def test_all_services_are_merged_newest_first(capsys: pytest.CaptureFixture[str]) -> None:
    metering, catalog = _logs()
    async with serving(ADD, metering) as m_addr, serving(ADD, catalog) as c_addr:
        code = await cli(
            "--metering", m_addr, "--catalog", c_addr, "audit", "--actor", "opk_0123",
            "--rpc", "AddCredits", "--target", "acme", "--since", "7d",
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "SERVICE", "ACTOR", "RPC", "TARGET", "CHANGE"]
    services = [line.split()[2] for line in lines[1:]]
    assert services == ["metering", "catalog", "metering", "metering"]
    assert "account_id=acme amount_usd=25 -> duplicate" not in out  # false is not shown
    assert lines[1].endswith("account_id=acme amount_usd=25")
    assert lines[2].endswith("model.context_length=4096 model.id=acme/m")
    assert lines[3].endswith("account_id=acme -> api_key.id=key_1 api_key.prefix=sk-sb-v1-AbCd")
    for log in (metering, catalog):
        first = log.requests[0]
        assert (first.actor, first.rpc, first.target) == ("opk_0123", "AddCredits", "acme")
        assert first.HasField("start_time")
    assert [r.page_token for r in metering.requests] == ["", "2"]


async def test_one_service_and_a_limit(capsys: pytest.CaptureFixture[str]) -> None:
    metering, catalog = _logs()
    async with serving(ADD, metering) as m_addr, serving(ADD, catalog) as c_addr:
        code = await cli(
            "--metering", m_addr, "--catalog", c_addr, "audit", "--service", "metering",
            "--limit", "2", "--json",
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    events = json.loads(out)["events"]
    assert [e["id"] for e in events] == ["9", "8"]
    assert events[0]["change"]["request"]["amount_usd"] == "25"
    assert "showing the newest 2" in err
    assert catalog.requests == []
    assert metering.requests[0].page_size == 2


async def test_an_unreachable_catalog_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    metering, _ = _logs()
    async with serving(ADD, metering) as m_addr:
        code = await cli("--metering", m_addr, "--catalog", "127.0.0.1:1", "audit")
    assert code == 1
    assert "cannot reach the catalog at 127.0.0.1:1" in capsys.readouterr().err


def test_the_summary_shows_values_set_and_cuts_long_ones() -> None:
    assert summary(
        {"request": {"key_id": "key_1", "limits": {"daily_usd": "5", "total_usd": ""}}}
    ) == ("key_id=key_1 limits.daily_usd=5")
    assert summary({"request": {"scopes": ["a", "b"]}}) == "scopes=a,b"
    assert len(summary({"request": {"description": "d" * 500}})) == 100
    assert summary({"truncated": True, "size_bytes": 70000}) == (
        "(too large to record: 70000 bytes)"
    )
