"""``switchboard keys limits``, ``credits add`` and ``balance`` against an in-process fake."""

from __future__ import annotations

import argparse
import json

import grpc
import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_cli.budgets import positive_usd, remaining, usd
from switchboard_core.errors import InvalidArgument, NotFound
from tests.fakes.cli_servers import abort, cli, serving

ADD = metering_pb2_grpc.add_MeteringServiceServicer_to_server
Context = grpc.aio.ServicerContext[object, object]
KEY = "key_0000000000000001"


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    """One key of account ``acme``; SetKeyLimits replaces the limits as the real one does."""

    def __init__(self, *, prepaid: bool = True) -> None:
        self.key = metering_pb2.ApiKey(
            id=KEY, account_id="acme", name="ci", prefix="sk-sb-v1-abcde",
            limits=metering_pb2.SpendLimits(total_usd="10", monthly_usd="4"),
            account_prepaid=prepaid,
        )  # fmt: skip
        self.account = metering_pb2.AccountBalance(
            account_id="acme", prepaid=prepaid, credit_usd="50" if prepaid else "0",
            spent_usd="12.5", reserved_usd="0.01", available_usd="37.49" if prepaid else "0",
        )  # fmt: skip
        self.balance_requests: list[metering_pb2.GetBalanceRequest] = []
        self.limit_requests: list[metering_pb2.SetKeyLimitsRequest] = []
        self.credit_requests: list[metering_pb2.AddCreditsRequest] = []

    async def _known_key(self, key_id: str, context: Context) -> None:
        if key_id != KEY:
            await abort(context, NotFound(f"API key {key_id!r} not found").to_status())

    async def GetBalance(
        self, request: metering_pb2.GetBalanceRequest, context: Context
    ) -> metering_pb2.GetBalanceResponse:
        self.balance_requests.append(request)
        reply = metering_pb2.GetBalanceResponse(account=self.account)
        if request.key_id:
            await self._known_key(request.key_id, context)
            spend = metering_pb2.KeySpend(
                key_id=KEY, limits=self.key.limits, spent_total_usd="2.5",
                spent_today_usd="0.75", spent_this_month_usd="3.985", reserved_usd="0.01",
            )  # fmt: skip
            reply.key.CopyFrom(spend)
        elif request.account_id != "acme":
            await abort(context, NotFound(f"account {request.account_id!r} not found").to_status())
        return reply

    async def SetKeyLimits(
        self, request: metering_pb2.SetKeyLimitsRequest, context: Context
    ) -> metering_pb2.SetKeyLimitsResponse:
        self.limit_requests.append(request)
        await self._known_key(request.key_id, context)
        self.key.limits.CopyFrom(request.limits)
        return metering_pb2.SetKeyLimitsResponse(api_key=self.key)

    async def AddCredits(
        self, request: metering_pb2.AddCreditsRequest, context: Context
    ) -> metering_pb2.AddCreditsResponse:
        self.credit_requests.append(request)
        if len(request.note) > 256:
            await abort(context, InvalidArgument({"note": "at most 256 characters"}).to_status())
        self.account.prepaid = True
        self.account.credit_usd = "75"
        self.account.available_usd = "62.49"
        seen = [
            r for r in self.credit_requests if r.request_id and r.request_id == request.request_id
        ]
        return metering_pb2.AddCreditsResponse(balance=self.account, duplicate=len(seen) > 1)


def _fake(*, prepaid: bool = True) -> FakeMetering:
    return FakeMetering(prepaid=prepaid)  # type: ignore[abstract]  # the base answers UNIMPLEMENTED


# keys limits


async def test_limits_keep_what_is_not_named(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "limits", KEY, "--daily", "1.50")
    out, err = capsys.readouterr()
    assert code == 0
    assert [r.key_id for r in fake.balance_requests] == [KEY]
    assert fake.balance_requests[0].account_id == ""
    (request,) = fake.limit_requests
    assert request.key_id == KEY
    assert request.limits == metering_pb2.SpendLimits(
        total_usd="10", daily_usd="1.50", monthly_usd="4"
    )
    assert out.splitlines() == [
        f"limits of {KEY} (account acme):",
        "  total:   10 USD",
        "  daily:   1.50 USD",
        "  monthly: 4 USD",
    ]
    assert err == "account acme is prepaid: its credit bounds this key too\n"


async def test_limits_clear_and_set_all_without_reading(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake(prepaid=False)
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "keys", "limits", KEY,
            "--clear-total", "--daily", " 0 ", "--clear-monthly",
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert fake.balance_requests == []  # nothing is kept, so nothing is read
    assert fake.limit_requests[0].limits == metering_pb2.SpendLimits(daily_usd="0")
    assert "  total:   none" in out.splitlines()
    assert "  daily:   0 USD" in out.splitlines()
    assert err == ""


async def test_limits_json(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("keys", "limits", KEY, "--clear-monthly", "--metering", address, "--json")
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert fake.limit_requests[0].limits == metering_pb2.SpendLimits(total_usd="10")
    assert data["api_key"]["id"] == KEY
    assert data["api_key"]["limits"] == {"total_usd": "10", "daily_usd": "", "monthly_usd": ""}
    assert data["api_key"]["account_prepaid"] is True


async def test_limits_of_an_unknown_key(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "limits", "key_nope", "--total", "5")
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == "switchboard: error: NOT_FOUND: API key 'key_nope' not found\n"
    assert fake.limit_requests == []  # the read failed: nothing was replaced


async def test_limits_of_an_unknown_key_when_nothing_is_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "keys", "limits", "key_nope",
            "--total", "5", "--daily", "1", "--monthly", "2",
        )  # fmt: skip
    assert code == 1
    assert "NOT_FOUND: API key 'key_nope' not found" in capsys.readouterr().err
    assert [r.key_id for r in fake.limit_requests] == ["key_nope"]


async def test_limits_need_a_change(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "limits", KEY)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("switchboard: error: nothing to change: give one of --total USD")
    assert "--clear-monthly" in err
    assert fake.balance_requests == fake.limit_requests == []


@pytest.mark.parametrize("amount", ["-1", "1e3", "1.", ".5", "five", "1,5", "1234567890123", ""])
async def test_limits_reject_bad_money(amount: str, capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "keys", "limits", KEY, "--monthly", amount)
    err = capsys.readouterr().err
    assert code == 2
    assert "argument --monthly: expected a non-negative amount in USD like 5 or 0.25" in err
    assert repr(amount) in err
    assert fake.limit_requests == []


async def test_limit_and_clear_of_one_window_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("keys", "limits", KEY, "--daily", "1", "--clear-daily") == 2
    assert "argument --clear-daily: not allowed with argument --daily" in capsys.readouterr().err


# credits add


async def test_credits_add(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake(prepaid=False)
    async with serving(ADD, fake) as address:
        code = await cli(
            "--metering", address, "credits", "add", "--account", "acme", "25.00",
            "--note", "INV-7",
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    (request,) = fake.credit_requests
    assert (request.account_id, request.amount_usd, request.note) == ("acme", "25.00", "INV-7")
    assert out.splitlines() == [
        "added 25.00 USD of credit to acme",
        "account acme (prepaid: its keys spend only its credit)",
        "  credit:    75 USD",
        "  spent:     12.5 USD",
        "  reserved:  0.01 USD",
        "  available: 62.49 USD",
    ]


async def test_credits_add_with_a_request_id_says_when_a_retry_added_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake()
    args = ("credits", "add", "--account", "acme", "5", "--request-id", "inv-9")
    async with serving(ADD, fake) as address:
        assert await cli("--metering", address, *args) == 0
        assert await cli("--metering", address, *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [r.request_id for r in fake.credit_requests] == ["inv-9", "inv-9"]
    assert lines[0] == "added 5 USD of credit to acme"
    assert "request inv-9 was already granted: nothing added" in lines


async def test_credits_add_json(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "--json", "credits", "add", "--account", "a", "1")
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert fake.credit_requests[0].note == ""
    assert data == {
        "balance": {
            "account_id": "acme", "prepaid": True, "credit_usd": "75", "spent_usd": "12.5",
            "reserved_usd": "0.01", "available_usd": "62.49",
        },
        "duplicate": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("amount", "why"), [("0", "must be more than 0"), ("0.000", "must be more than 0"),
                        ("-5", "expected a non-negative amount"), ("$5", "expected a non")]
)  # fmt: skip
async def test_credits_reject_bad_amounts(
    amount: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _fake()
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "credits", "add", "--account", "acme", amount)
    err = capsys.readouterr().err
    assert code == 2
    assert f"argument AMOUNT_USD: {why}" in err
    assert fake.credit_requests == []


async def test_credits_server_violation_is_rendered(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli(
            "--metering", address, "credits", "add", "--account", "acme", "5", "--note", "x" * 300
        )
    assert code == 1
    assert capsys.readouterr().err == (
        "switchboard: error: INVALID_ARGUMENT: invalid request: note: at most 256 characters\n"
    )


# balance


async def test_balance_of_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake()
    fake.key.limits.daily_usd = "0.5"
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "balance", "--key", KEY)
    out = capsys.readouterr().out
    (request,) = fake.balance_requests
    assert code == 0
    assert (request.key_id, request.account_id) == (KEY, "")
    assert out.splitlines() == [
        f"key {KEY} (account acme)",
        "WINDOW      LIMIT USD  SPENT USD  REMAINING USD",
        "total              10        2.5           7.49",
        "today             0.5       0.75              0",
        "this month          4      3.985          0.005",
        "reserved: 0.01 USD (requests in flight)",
        "",
        "account acme (prepaid: its keys spend only its credit)",
        "  credit:    50 USD",
        "  spent:     12.5 USD",
        "  reserved:  0.01 USD",
        "  available: 37.49 USD",
    ]


async def test_balance_of_a_postpaid_account(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake(prepaid=False)
    async with serving(ADD, fake) as address:
        code = await cli("--metering", address, "balance", "--account", "acme")
    out = capsys.readouterr().out
    assert code == 0
    assert (fake.balance_requests[0].account_id, fake.balance_requests[0].key_id) == ("acme", "")
    assert out.splitlines() == [
        "account acme (not prepaid: no credit limit)",
        "  spent:     12.5 USD",
        "  reserved:  0.01 USD",
    ]


async def test_balance_of_a_key_without_limits(capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake(prepaid=False)
    fake.key.ClearField("limits")
    async with serving(ADD, fake) as address:
        assert await cli("--metering", address, "balance", "--key", KEY) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["total", "none", "2.5", "-"]
    assert lines[4].split() == ["this", "month", "none", "3.985", "-"]


async def test_balance_json(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        assert await cli("--metering", address, "balance", "--key", KEY, "--json") == 0
        assert await cli("--metering", address, "balance", "--account", "acme", "--json") == 0
    first, second = capsys.readouterr().out.split("\n}\n", 1)
    by_key, by_account = json.loads(first + "}"), json.loads(second)
    assert by_key["key"]["limits"] == {"total_usd": "10", "daily_usd": "", "monthly_usd": "4"}
    assert by_key["key"]["spent_this_month_usd"] == "3.985"
    assert by_key["account"]["available_usd"] == "37.49"
    assert "key" not in by_account
    assert by_account["account"]["credit_usd"] == "50"


async def test_balance_of_an_unknown_account(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(ADD, _fake()) as address:
        code = await cli("--metering", address, "balance", "--account", "nobody")
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == "switchboard: error: NOT_FOUND: account 'nobody' not found\n"


async def test_balance_needs_exactly_one_of_key_and_account(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await cli("balance") == 2
    assert "one of the arguments --key --account is required" in capsys.readouterr().err
    assert await cli("balance", "--key", KEY, "--account", "acme") == 2
    assert "not allowed with argument" in capsys.readouterr().err


# helpers


def test_remaining_is_exact_and_never_negative() -> None:
    assert remaining("0.3", "0.1", "0.1") == "0.1"  # no float error
    assert remaining("10", "2.5", "0.01") == "7.49"
    assert remaining("1", "0.75", "0.5") == "0"
    assert remaining("5", "", "") == "5"
    assert remaining("", "2.5", "0") == "-"
    assert remaining("junk", "2.5", "0") == "-"


def test_usd_and_positive_usd() -> None:
    assert usd(" 12.50 ") == "12.50"
    assert usd("0") == "0"
    assert positive_usd("0.000000000001") == "0.000000000001"
    with pytest.raises(argparse.ArgumentTypeError, match="non-negative"):
        usd("-0.5")
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0"):
        positive_usd("0.0")
