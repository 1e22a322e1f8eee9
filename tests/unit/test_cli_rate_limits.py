"""Rate limits in the CLI against in-process fakes: ``keys limits --rpm/--tpm/--concurrent``
(sent only when named, the others kept), ``accounts limits``, and where a key is shown."""

from __future__ import annotations

import json

import grpc
import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from switchboard_core.errors import NotFound
from tests.fakes.cli_servers import abort, cli, serving

ADD = metering_pb2_grpc.add_MeteringServiceServicer_to_server
Context = grpc.aio.ServicerContext[object, object]
KEY = "key_0000000000000001"
API_KEY = "sk-sb-v1-" + "k" * 43
OWN = metering_pb2.RateLimits(requests_per_minute=600, tokens_per_minute=90000, max_concurrent=4)
SHARED = metering_pb2.RateLimits(requests_per_minute=6000, max_concurrent=40)


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    """Key ``KEY`` of account ``acme``, with spend and rate limits of its own and its
    account's; SetKeyLimits keeps unset rate limits, as the real one does."""

    def __init__(self) -> None:
        self.key = metering_pb2.ApiKey(
            id=KEY, account_id="acme", name="ci", prefix="sk-sb-v1-abcde",
            limits=metering_pb2.SpendLimits(total_usd="10", monthly_usd="4"),
            rate_limits=OWN, account_rate_limits=SHARED,
        )  # fmt: skip
        self.reads: list[str] = []
        self.key_requests: list[metering_pb2.SetKeyLimitsRequest] = []
        self.account_requests: list[metering_pb2.SetAccountLimitsRequest] = []

    async def _known_key(self, key_id: str, context: Context) -> None:
        if key_id != KEY:
            await abort(context, NotFound(f"API key {key_id!r} not found").to_status())

    async def GetApiKey(
        self, request: metering_pb2.GetApiKeyRequest, context: Context
    ) -> metering_pb2.GetApiKeyResponse:
        self.reads.append("GetApiKey")
        await self._known_key(request.key_id, context)
        return metering_pb2.GetApiKeyResponse(api_key=self.key)

    async def GetBalance(
        self, request: metering_pb2.GetBalanceRequest, context: Context
    ) -> metering_pb2.GetBalanceResponse:
        self.reads.append("GetBalance")
        await self._known_key(request.key_id, context)
        return metering_pb2.GetBalanceResponse(
            key=metering_pb2.KeySpend(key_id=KEY, limits=self.key.limits),
            account=metering_pb2.AccountBalance(account_id="acme"),
        )

    async def SetKeyLimits(
        self, request: metering_pb2.SetKeyLimitsRequest, context: Context
    ) -> metering_pb2.SetKeyLimitsResponse:
        self.key_requests.append(request)
        await self._known_key(request.key_id, context)
        self.key.limits.CopyFrom(request.limits)
        if request.HasField("rate_limits"):
            self.key.ClearField("rate_limits")
            if request.rate_limits != metering_pb2.RateLimits():
                self.key.rate_limits.CopyFrom(request.rate_limits)
        return metering_pb2.SetKeyLimitsResponse(api_key=self.key)

    async def SetAccountLimits(
        self, request: metering_pb2.SetAccountLimitsRequest, context: Context
    ) -> metering_pb2.SetAccountLimitsResponse:
        self.account_requests.append(request)
        if request.account_id != "acme":
            await abort(context, NotFound(f"account {request.account_id!r} not found").to_status())
        return metering_pb2.SetAccountLimitsResponse(
            account_id=request.account_id, rate_limits=request.rate_limits
        )

    async def CreateApiKey(
        self, request: metering_pb2.CreateApiKeyRequest, context: Context
    ) -> metering_pb2.CreateApiKeyResponse:
        key = metering_pb2.ApiKey(
            id="key_0000000000000003", account_id=request.account_id, prefix="sk-sb-v1-lmnop",
            account_rate_limits=SHARED,
        )  # fmt: skip
        return metering_pb2.CreateApiKeyResponse(api_key=key, secret=API_KEY)

    async def ListApiKeys(
        self, request: metering_pb2.ListApiKeysRequest, context: Context
    ) -> metering_pb2.ListApiKeysResponse:
        plain = metering_pb2.ApiKey(
            id="key_0000000000000002", account_id="acme", prefix="sk-sb-v1-fghij",
            account_rate_limits=SHARED,
        )  # fmt: skip
        return metering_pb2.ListApiKeysResponse(api_keys=[self.key, plain])


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    async def GetKey(
        self, request: account_pb2.GetKeyRequest, context: Context
    ) -> account_pb2.GetKeyResponse:
        key = metering_pb2.ApiKey(
            id="key_1", account_id="acme", prefix="sk-sb-v1-kkkkk",
            rate_limits=metering_pb2.RateLimits(requests_per_minute=60),
            account_rate_limits=SHARED,
        )  # fmt: skip
        return account_pb2.GetKeyResponse(
            api_key=key,
            spend=metering_pb2.KeySpend(key_id="key_1"),
            account=metering_pb2.AccountBalance(account_id="acme"),
        )


def _fake() -> FakeMetering:
    return FakeMetering()  # type: ignore[abstract]  # the base answers UNIMPLEMENTED


# keys limits


async def test_one_rate_limit_keeps_the_others_and_the_spend_limits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "limits", KEY, "--rpm", "60")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert fake.reads == ["GetApiKey"]  # the key's spend and rate limits, in one read
    (request,) = fake.key_requests
    assert request.limits == metering_pb2.SpendLimits(total_usd="10", monthly_usd="4")
    assert request.rate_limits == metering_pb2.RateLimits(
        requests_per_minute=60, tokens_per_minute=90000, max_concurrent=4
    )
    assert out.splitlines() == [
        f"limits of {KEY} (account acme):",
        "  total:   10 USD",
        "  daily:   none",
        "  monthly: 4 USD",
        "  rate:    60 requests/min, 90000 tokens/min, 4 concurrent",
        "  account: 6000 requests/min, 40 concurrent (shared by the account's keys)",
    ]


async def test_all_three_rate_limits_need_no_read_of_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "keys", "limits", KEY,
            "--rpm", "0", "--tpm", "10000000000", "--concurrent", "100000", "--daily", "1",
        )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert fake.reads == ["GetBalance"]  # only the spend limits not named are read, as before
    (request,) = fake.key_requests
    assert request.limits == metering_pb2.SpendLimits(
        total_usd="10", daily_usd="1", monthly_usd="4"
    )
    assert request.rate_limits == metering_pb2.RateLimits(
        tokens_per_minute=10_000_000_000, max_concurrent=100_000
    )


async def test_clearing_rate_limits_sends_an_empty_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "keys", "limits", KEY, "--clear-rate-limits",
            "--clear-total", "--clear-daily", "--clear-monthly", "--json",
        )  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert fake.reads == []
    (request,) = fake.key_requests
    assert request.HasField("rate_limits") and request.rate_limits == metering_pb2.RateLimits()
    assert "rate_limits" not in data["api_key"]
    assert data["api_key"]["account_rate_limits"]["requests_per_minute"] == 6000


async def test_spend_limits_alone_leave_the_rate_limits_unset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "limits", KEY, "--daily", "2")
    out = capsys.readouterr().out
    assert code == 0
    (request,) = fake.key_requests
    assert not request.HasField("rate_limits")  # metering keeps them
    assert "  rate:    600 requests/min, 90000 tokens/min, 4 concurrent" in out.splitlines()


@pytest.mark.parametrize(
    ("option", "value", "bound"),
    [
        ("--rpm", "1000001", "1,000,000"),
        ("--rpm", "-1", "1,000,000"),
        ("--tpm", "10000000001", "10,000,000,000"),
        ("--concurrent", "100001", "100,000"),
        ("--concurrent", "two", "100,000"),
        ("--concurrent", "1.5", "100,000"),
    ],
)
async def test_rate_limits_out_of_bounds_are_refused_before_sending(
    option: str, value: str, bound: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "limits", KEY, option, value)
    err = capsys.readouterr().err
    assert code == 2
    assert f"argument {option}: expected a whole number from 0 (no limit) to {bound}" in err
    assert fake.reads == [] and fake.key_requests == []


async def test_a_rate_limit_and_clearing_them_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "keys", "limits", KEY, "--tpm", "5", "--clear-rate-limits"
        )
    assert code == 2
    assert "--clear-rate-limits sets no limit: it cannot go with --tpm" in capsys.readouterr().err
    assert fake.key_requests == []


async def test_nothing_to_change_lists_the_rate_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("keys", "limits", KEY) == 2
    err = capsys.readouterr().err
    assert "--rpm N, --tpm N, --concurrent N, --clear-rate-limits" in err


# accounts limits


async def test_account_limits_are_set_all_three_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "accounts", "limits", "acme",
            "--rpm", "6000", "--tpm", "0", "--concurrent", "40",
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    (request,) = fake.account_requests
    assert request.account_id == "acme" and request.rate_limits == SHARED
    assert out.splitlines() == [
        "rate limits of account acme (shared by its keys):",
        "  requests/min:  6000",
        "  tokens/min:    none",
        "  concurrent:    40",
    ]


async def test_account_limits_missing_one_are_refused_without_a_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "accounts", "limits", "acme", "--rpm", "10")
    err = capsys.readouterr().err
    assert code == 2
    assert "give --tpm, --concurrent too (0 for no limit), or --clear-rate-limits" in err
    assert fake.account_requests == []


async def test_clearing_an_unknown_accounts_limits_is_not_found(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "accounts", "limits", "nobody", "--clear-rate-limits"
        )
    err = capsys.readouterr().err
    assert code == 1
    assert err == "switchboard: error: NOT_FOUND: account 'nobody' not found\n"
    (request,) = fake.account_requests
    assert request.rate_limits == metering_pb2.RateLimits()


async def test_account_limits_json(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "accounts", "limits", "acme", "--clear-rate-limits", "--metering", address, "--json"
        )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["account_id"] == "acme"


# where a key is shown


async def test_keys_list_shows_each_keys_rate_limits_and_the_accounts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli("--metering", address, "keys", "list", "--account", "acme")
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "RATE LIMITS" in lines[0]
    assert "600 requests/min, 90000 tokens/min, 4 concurrent" in lines[1]
    assert lines[2].startswith("key_0000000000000002") and " -  " in lines[2]
    assert lines[3] == "account acme rate limits: 6000 requests/min, 40 concurrent"


async def test_a_new_key_shows_the_rate_limits_its_account_has_already(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli("--metering", address, "keys", "create", "--account", "acme")
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert "account rate limits: 6000 requests/min, 40 concurrent" in out


async def test_whoami_shows_the_keys_and_its_accounts_rate_limits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    router = FakeRouter()  # type: ignore[abstract]  # the base answers UNIMPLEMENTED
    async with serving(router_pb2_grpc.add_RouterServiceServicer_to_server, router) as address:
        code = await cli("--router", address, "--api-key", API_KEY, "whoami")
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    start = lines.index("RATE LIMIT    KEY   ACCOUNT")
    assert lines[start + 1 : start + 4] == [
        "requests/min  60    6000",
        "tokens/min    none  none",
        "concurrent    none  40",
    ]
