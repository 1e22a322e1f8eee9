"""``switchboard keys`` and ``switchboard usage`` against an in-process fake metering."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_cli.usage import parse_since
from tests.fakes.cli_servers import cli, serving

ADD = metering_pb2_grpc.add_MeteringServiceServicer_to_server
SECRET = "sk-sb-v1-the-one-time-secret"
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _key(index: int, *, revoked: bool = False) -> metering_pb2.ApiKey:
    key = metering_pb2.ApiKey(
        id=f"key_{index:016x}", account_id="acme", name=f"k{index}",
        prefix="sk-sb-v1-abcde", create_time=_ts(T0),
    )  # fmt: skip
    if revoked:
        key.revoke_time.CopyFrom(_ts(T0 + timedelta(days=1)))
    return key


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self) -> None:
        self.usage_requests: list[metering_pb2.QueryUsageRequest] = []
        self.list_tokens: list[str] = []

    async def CreateApiKey(
        self,
        request: metering_pb2.CreateApiKeyRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> metering_pb2.CreateApiKeyResponse:
        key = _key(1)
        key.account_id, key.name = request.account_id, request.name
        return metering_pb2.CreateApiKeyResponse(api_key=key, secret=SECRET)

    async def ListApiKeys(
        self,
        request: metering_pb2.ListApiKeysRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> metering_pb2.ListApiKeysResponse:
        self.list_tokens.append(request.page_token)
        if not request.page_token:
            return metering_pb2.ListApiKeysResponse(api_keys=[_key(2)], next_page_token="p2")
        return metering_pb2.ListApiKeysResponse(api_keys=[_key(1, revoked=True)])

    async def RevokeApiKey(
        self,
        request: metering_pb2.RevokeApiKeyRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> metering_pb2.RevokeApiKeyResponse:
        return metering_pb2.RevokeApiKeyResponse(api_key=_key(1, revoked=True))

    async def QueryUsage(
        self,
        request: metering_pb2.QueryUsageRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> metering_pb2.QueryUsageResponse:
        self.usage_requests.append(request)
        rows = [
            metering_pb2.UsageRow(
                bucket_start=_ts(T0 + timedelta(hours=h)),
                model_id="switchboard/demo",
                provider_id="demo",
                requests=2,
                prompt_tokens=10,
                completion_tokens=5,
                cost_usd="0.0000015",
            )
            for h in range(2)
        ]
        return metering_pb2.QueryUsageResponse(
            rows=rows, total_requests=4, total_prompt_tokens=20, total_completion_tokens=10,
            total_cost_usd="0.000003",
        )  # fmt: skip


def _fake() -> FakeMetering:
    return FakeMetering()  # type: ignore[abstract]  # the generated base answers UNIMPLEMENTED


async def test_keys_create_prints_the_secret_once(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli(
            "--metering", address, "keys", "create", "--account", "acme", "--name", "ci"
        )
    out, err = capsys.readouterr()
    assert code == 0
    assert out.count(SECRET) == 1
    assert SECRET not in err
    assert "key_0000000000000001" in out
    assert "sk-sb-v1-abcde" in out
    assert "shown only once" in err


async def test_keys_list_walks_pages_and_shows_state(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "list", "--account", "acme")
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert fake.list_tokens == ["", "p2"]
    assert lines[1].startswith("key_0000000000000002")
    assert lines[1].endswith("active")
    assert lines[2].endswith("revoked 2024-05-02 00:00:00")


async def test_keys_revoke(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli("--metering", address, "keys", "revoke", "key_0000000000000001")
    assert code == 0
    assert "revoked key_0000000000000001" in capsys.readouterr().out


async def test_usage_prints_rows_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "usage", "--key", "key_1", "--bucket", "hour", "--since", "7d"
        )
    out = capsys.readouterr().out
    request = fake.usage_requests[0]
    since = datetime.now(UTC) - request.start_time.ToDatetime(tzinfo=UTC)
    assert code == 0
    assert request.key_id == "key_1"
    assert request.bucket == metering_pb2.TIME_BUCKET_HOUR
    assert timedelta(days=7) <= since < timedelta(days=7, minutes=1)
    assert "2024-05-01 01:00" in out
    assert "0.0000015" in out
    assert out.splitlines()[-1] == (
        "total: 4 requests, 20 prompt tokens, 10 completion tokens, 0.000003 USD"
    )


async def test_usage_json(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        assert await cli("--metering", address, "usage", "--key", "key_1", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_cost_usd"] == "0.000003"
    assert data["total_requests"] == "4"
    assert not fake.usage_requests[0].HasField("start_time")
    assert fake.usage_requests[0].bucket == metering_pb2.TIME_BUCKET_DAY


async def test_usage_of_an_account(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        assert await cli("--metering", address, "usage", "--account", "acme") == 0
    request = fake.usage_requests[0]
    assert (request.key_id, request.account_id) == ("", "acme")
    assert capsys.readouterr().out.splitlines()[-1].startswith("total: 4 requests")


async def test_usage_needs_a_key_an_account_or_an_api_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await cli("usage") == 2  # the caller's own usage, through the router: no API key
    assert "no API key: pass --api-key" in capsys.readouterr().err
    assert await cli("usage", "--key", "key_1", "--account", "acme") == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_parse_since() -> None:
    now = datetime(2024, 5, 8, 12, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2024, 5, 8, 10, 30, tzinfo=UTC)
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="neither a span"):
        parse_since("yesterday")
