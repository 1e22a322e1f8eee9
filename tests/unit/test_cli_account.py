"""The CLI with just an API key: ``key``, ``models``, ``generation`` and ``usage`` through the
router's public RPCs (an in-process fake router), and ``keys create`` with an expiry and
allow-lists (a fake metering)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from switchboard.catalog.v1 import catalog_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from switchboard_core.errors import NotFound
from tests.fakes.cli_servers import abort, cli, serving

Context = grpc.aio.ServicerContext[object, object]
API_KEY = "sk-sb-v1-" + "k" * 43
T0 = datetime(2024, 5, 1, tzinfo=UTC)
GENERATION = "gen-1"


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _model(index: int) -> catalog_pb2.Model:
    model_id = f"author/model-{index}"
    return catalog_pb2.Model(
        id=model_id,
        context_length=8192,
        endpoints=[
            catalog_pb2.Endpoint(
                id=f"alpha:{model_id}", model_id=model_id, provider_id="alpha",
                status=catalog_pb2.ENDPOINT_STATUS_ACTIVE,
            )
        ],
    )  # fmt: skip


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """The calling key is ``key_1`` of account ``acme``; three models, two to a page."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.usage_requests: list[account_pb2.QueryUsageRequest] = []
        self.list_requests: list[account_pb2.ListModelsRequest] = []

    def _seen(self, context: Context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.authorizations.append(str(metadata.get("authorization", "")))

    async def GetKey(
        self, request: account_pb2.GetKeyRequest, context: Context
    ) -> account_pb2.GetKeyResponse:
        self._seen(context)
        key = metering_pb2.ApiKey(
            id="key_1", account_id="acme", name="ci", prefix="sk-sb-v1-kkkkk",
            create_time=_ts(T0), expire_time=_ts(T0 + timedelta(days=30)),
            allowed_models=["author/model-1"], allowed_providers=["alpha", "beta"],
            limits=metering_pb2.SpendLimits(daily_usd="5"),
        )  # fmt: skip
        spend = metering_pb2.KeySpend(
            key_id="key_1", limits=key.limits, spent_today_usd="1.25", reserved_usd="0.5"
        )
        account = metering_pb2.AccountBalance(
            account_id="acme", prepaid=True, credit_usd="20", spent_usd="3",
            reserved_usd="0.5", available_usd="16.5",
        )  # fmt: skip
        return account_pb2.GetKeyResponse(api_key=key, spend=spend, account=account)

    async def GetGeneration(
        self, request: account_pb2.GetGenerationRequest, context: Context
    ) -> account_pb2.GetGenerationResponse:
        self._seen(context)
        if request.generation_id != GENERATION:
            await abort(
                context, NotFound(f"generation {request.generation_id!r} not found").to_status()
            )
        generation = metering_pb2.UsageEvent(
            generation_id=GENERATION, key_id="key_1", account_id="acme", model_id="author/model-1",
            provider_id="alpha", endpoint_id="alpha:author/model-1", cost_usd="0.001",
            create_time=_ts(T0),
        )  # fmt: skip
        return account_pb2.GetGenerationResponse(generation=generation, tokens_per_second=12.5)

    async def QueryUsage(
        self, request: account_pb2.QueryUsageRequest, context: Context
    ) -> account_pb2.QueryUsageResponse:
        self._seen(context)
        self.usage_requests.append(request)
        row = metering_pb2.UsageRow(
            bucket_start=_ts(T0), model_id="author/model-1", provider_id="alpha", requests=3,
            cost_usd="0.003",
        )  # fmt: skip
        return account_pb2.QueryUsageResponse(rows=[row], total_requests=3, total_cost_usd="0.003")

    async def ListModels(
        self, request: account_pb2.ListModelsRequest, context: Context
    ) -> account_pb2.ListModelsResponse:
        self._seen(context)
        self.list_requests.append(request)
        models = [_model(i) for i in range(3)]
        start = int(request.page_token or 0)
        more = start + 2 < len(models)
        return account_pb2.ListModelsResponse(
            models=models[start : start + 2], next_page_token=str(start + 2) if more else ""
        )


def _router() -> FakeRouter:
    return FakeRouter()  # type: ignore[abstract]  # the generated base answers UNIMPLEMENTED


ROUTER_ADD = router_pb2_grpc.add_RouterServiceServicer_to_server


async def test_key_shows_the_callers_own_key_with_just_the_api_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _router()
    async with serving(ROUTER_ADD, fake) as address:
        assert await cli("--router", address, "--api-key", API_KEY, "key") == 0
        out = capsys.readouterr().out
        assert await cli("--router", address, "--api-key", API_KEY, "whoami", "--json") == 0
        data = json.loads(capsys.readouterr().out)
    assert fake.authorizations == [f"Bearer {API_KEY}"] * 2
    assert "key_1 (sk-sb-v1-kkkkk...) ci" in out
    assert "expires:   2024-05-31 00:00:00 UTC" in out
    assert "models:    author/model-1" in out
    assert "providers: alpha, beta" in out
    assert "today" in out and "3.25" in out  # 5 - 1.25 - 0.5 remains today
    assert "available:" in out and "16.5 USD" in out
    assert API_KEY not in out
    assert data["api_key"]["allowed_providers"] == ["alpha", "beta"]


async def test_own_data_commands_need_an_api_key_or_an_operator_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in (["key"], ["models", "list"], ["generation", GENERATION], ["usage"]):
        assert await cli(*command) == 2, command
        assert "no API key: pass --api-key" in capsys.readouterr().err


async def test_models_list_and_show_through_the_router(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _router()
    async with serving(ROUTER_ADD, fake) as address:
        base = ("--router", address, "--api-key", API_KEY, "models")
        assert await cli(*base, "list", "--provider", "alpha") == 0
        listed = capsys.readouterr().out
        assert await cli(*base, "show", "author/model-2") == 0
        shown = capsys.readouterr().out
        assert await cli(*base, "show", "nobody/nothing") == 1
        missing = capsys.readouterr().err
    assert [r.page_token for r in fake.list_requests[:2]] == ["", "2"]
    assert fake.list_requests[0].provider_id == "alpha"
    assert all(f"author/model-{i}" in listed for i in range(3))
    assert shown.startswith("author/model-2") and "alpha:author/model-2" in shown
    assert "'nobody/nothing' is not in the catalog, or this API key may not use it" in missing


async def test_generation_through_the_router(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ROUTER_ADD, _router()) as address:
        base = ("--router", address, "--api-key", API_KEY, "generation")
        assert await cli(*base, GENERATION) == 0
        out = capsys.readouterr().out
        assert await cli(*base, "gen-of-someone-else") == 1
        err = capsys.readouterr().err
    assert f"generation:   {GENERATION}" in out
    assert "12.5 tokens/s" in out
    assert "NOT_FOUND: generation 'gen-of-someone-else' not found" in err


async def test_usage_of_the_key_or_its_whole_account(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _router()
    async with serving(ROUTER_ADD, fake) as address:
        base = ("--router", address, "--api-key", API_KEY, "usage")
        assert await cli(*base, "--since", "7d") == 0
        assert await cli(*base, "--whole-account", "--bucket", "hour") == 0
    out = capsys.readouterr().out
    by_key, by_account = fake.usage_requests
    assert by_key.scope == account_pb2.USAGE_SCOPE_KEY and by_key.HasField("start_time")
    assert by_account.scope == account_pb2.USAGE_SCOPE_ACCOUNT
    assert by_account.bucket == metering_pb2.TIME_BUCKET_HOUR
    assert "total: 3 requests" in out


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self) -> None:
        self.created: list[metering_pb2.CreateApiKeyRequest] = []

    async def CreateApiKey(
        self, request: metering_pb2.CreateApiKeyRequest, context: Context
    ) -> metering_pb2.CreateApiKeyResponse:
        self.created.append(request)
        key = metering_pb2.ApiKey(
            id="key_1", account_id=request.account_id, prefix="sk-sb-v1-kkkkk",
            allowed_models=request.allowed_models, allowed_providers=request.allowed_providers,
        )  # fmt: skip
        if request.HasField("expire_time"):
            key.expire_time.CopyFrom(request.expire_time)
        return metering_pb2.CreateApiKeyResponse(api_key=key, secret=API_KEY)


async def test_keys_create_with_an_expiry_and_allow_lists(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeMetering()  # type: ignore[abstract]
    add = metering_pb2_grpc.add_MeteringServiceServicer_to_server
    async with serving(add, fake) as address:
        code = await cli(
            "--metering", address, "keys", "create", "--account", "acme",
            "--expires-in-days", "7", "--model", "openai/gpt-4o-mini", "--model", "x/y",
            "--provider", "openai",
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    request = fake.created[0]
    assert list(request.allowed_models) == ["openai/gpt-4o-mini", "x/y"]
    assert list(request.allowed_providers) == ["openai"]
    left = request.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(days=7) - timedelta(minutes=1) < left <= timedelta(days=7)
    assert "models:    openai/gpt-4o-mini, x/y" in out
    assert "providers: openai" in out
    assert "expires:" in out


@pytest.mark.parametrize("days", ["0", "-1", "1.5", "soon", "36501"])
async def test_keys_create_refuses_a_bad_expiry(
    days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("keys", "create", "--account", "acme", "--expires-in-days", days) == 2
    assert "--expires-in-days" in capsys.readouterr().err
