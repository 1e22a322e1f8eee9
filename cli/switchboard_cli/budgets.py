"""``switchboard keys limits``, ``credits add`` and ``balance``: spend limits and prepaid credit.

The metering service keeps them. Money is a decimal string in USD both ways, as in the protos;
the CLI checks the format before sending and never turns amounts into floats. ``keys limits``
sets a key's rate limits too (``--rpm``, ``--tpm``, ``--concurrent``:
:mod:`switchboard_cli.rate_limits`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_cli import rate_limits
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.errors import CliError
from switchboard_cli.output import Output
from switchboard_core.money import MoneyFormatError, parse_usd


@dataclass(frozen=True, slots=True)
class Window:
    """One spend limit: its options, its fields in SpendLimits and KeySpend, its row label."""

    option: str
    limit_field: str
    spent_field: str
    label: str
    span: str


WINDOWS = (
    Window("total", "total_usd", "spent_total_usd", "total", "over the key's lifetime"),
    Window("daily", "daily_usd", "spent_today_usd", "today", "per UTC day"),
    Window("monthly", "monthly_usd", "spent_this_month_usd", "this month", "per UTC month"),
)
LIMITS_EPILOG = (
    "Limits not named keep their current value. A spend limit of 0 blocks every request; a "
    "rate limit of 0 is no limit. Routers apply a change on their next request. "
    "`switchboard balance --key KEY_ID` shows the spend limits."
)


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    credits = commands.add_parser("credits", help="add prepaid credit to an account")
    actions = credits.add_subparsers(dest="credits_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", parents=[common], help="grant credit; the account's keys then spend only credit"
    )
    add.add_argument("--account", required=True, help="account id; created when new")
    add.add_argument("amount", type=positive_usd, metavar="AMOUNT_USD", help="e.g. 25 or 12.50")
    add.add_argument("--note", default="", help="kept with the grant, e.g. an invoice number")
    add.add_argument(
        "--request-id",
        default="",
        help="idempotency key: running the command again with it adds nothing more",
    )
    add.set_defaults(handler=add_credits, service="metering")

    balance = commands.add_parser(
        "balance", parents=[common], help="credit and spend of an account, or a key's limits too"
    )
    which = balance.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", metavar="KEY_ID", help="a key, its limits and its account")
    which.add_argument("--account", help="an account's credit and spend")
    balance.set_defaults(handler=show_balance, service="metering")


def register_limits(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``keys limits``: an action of the ``keys`` command (:mod:`switchboard_cli.keys`)."""
    limits = actions.add_parser(
        "limits",
        parents=[common],
        help="set or clear a key's spend and rate limits",
        epilog=LIMITS_EPILOG,
    )
    limits.add_argument("key_id", metavar="KEY_ID", help="e.g. key_0123456789abcdef")
    for window in WINDOWS:
        group = limits.add_mutually_exclusive_group()
        group.add_argument(
            f"--{window.option}", type=usd, metavar="USD", help=f"spend limit {window.span}"
        )
        group.add_argument(
            f"--clear-{window.option}", action="store_true", help=f"no {window.option} limit"
        )
    rate_limits.add_options(limits, "key")
    limits.set_defaults(handler=set_key_limits, service="metering")


def usd(text: str) -> str:
    """A non-negative USD amount such as ``5`` or ``0.25``, as the metering service takes it."""
    amount = text.strip()
    try:
        parse_usd(amount)  # the metering service's own check
    except MoneyFormatError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative amount in USD like 5 or 0.25 (no sign, no exponent,"
            f" at most 12 digits each side of the point), got {text!r}"
        ) from None
    return amount


def positive_usd(text: str) -> str:
    amount = usd(text)
    if Decimal(amount) == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return amount


async def set_key_limits(
    args: argparse.Namespace, channel: grpc.aio.Channel, output: Output
) -> int:
    changes: dict[str, str] = {}  # SpendLimits field -> new value, "" to clear
    for window in WINDOWS:
        value: str | None = getattr(args, window.option)
        if value is not None or getattr(args, f"clear_{window.option}"):
            changes[window.limit_field] = value or ""
    rates = bool(rate_limits.named(args)) or args.clear_rate_limits
    if not changes and not rates:
        options = [f"--{window.option} USD" for window in WINDOWS]
        options += [f"--clear-{window.option}" for window in WINDOWS]
        options += rate_limits.OPTIONS
        raise CliError(f"nothing to change: give one of {', '.join(options)}", exit_code=2)
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    limits = metering_pb2.SpendLimits()
    current_rates: metering_pb2.RateLimits | None = None
    # SetKeyLimits replaces all three spend limits, and all three rate limits when it sends
    # any: start from the key's current ones. Not atomic: a change made by someone else in
    # between is overwritten.
    if rates and not rate_limits.complete(args):
        current = await stub.GetApiKey(
            metering_pb2.GetApiKeyRequest(key_id=args.key_id), timeout=UNARY_TIMEOUT
        )
        limits.CopyFrom(current.api_key.limits)
        current_rates = current.api_key.rate_limits
    elif len(changes) < len(WINDOWS):
        balance = await stub.GetBalance(
            metering_pb2.GetBalanceRequest(key_id=args.key_id), timeout=UNARY_TIMEOUT
        )
        limits.CopyFrom(balance.key.limits)
    for field, value in changes.items():
        setattr(limits, field, value)
    request = metering_pb2.SetKeyLimitsRequest(key_id=args.key_id, limits=limits)
    wanted = rate_limits.requested(args, current_rates)
    if wanted is not None:  # unset keeps the key's rate limits; empty removes them
        request.rate_limits.SetInParent()
        request.rate_limits.CopyFrom(wanted)
    response = await stub.SetKeyLimits(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    key = response.api_key
    output.line(f"limits of {key.id} (account {key.account_id}):")
    for window in WINDOWS:
        amount = getattr(key.limits, window.limit_field)
        output.line(f"  {window.option + ':':<8} {f'{amount} USD' if amount else 'none'}")
    if rates or rate_limits.enforced(key.rate_limits):
        output.line(f"  {'rate:':<8} {rate_limits.summary(key.rate_limits)}")
    if rate_limits.enforced(key.account_rate_limits):
        shared = rate_limits.summary(key.account_rate_limits)
        output.line(f"  {'account:':<8} {shared} (shared by the account's keys)")
    if key.account_prepaid:
        output.note(f"account {key.account_id} is prepaid: its credit bounds this key too")
    return 0


async def add_credits(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    request = metering_pb2.AddCreditsRequest(
        account_id=args.account, amount_usd=args.amount, note=args.note, request_id=args.request_id
    )
    response = await stub.AddCredits(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    if response.duplicate:
        output.line(f"request {args.request_id} was already granted: nothing added")
    else:
        output.line(f"added {args.amount} USD of credit to {response.balance.account_id}")
    account_lines(output, response.balance)
    return 0


async def show_balance(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    request = metering_pb2.GetBalanceRequest(account_id=args.account or "", key_id=args.key or "")
    response = await stub.GetBalance(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    if response.HasField("key"):
        spend = response.key
        output.line(f"key {spend.key_id} (account {response.account.account_id})")
        output.table(
            ["WINDOW", "LIMIT USD", "SPENT USD", "REMAINING USD"],
            [window_row(spend, window) for window in WINDOWS],
            numeric={1, 2, 3},
        )
        output.line(f"reserved: {_usd(spend.reserved_usd)} USD (requests in flight)")
        output.line()
    account_lines(output, response.account)
    return 0


def remaining(limit: str, spent: str, reserved: str) -> str:
    """What a limit still admits, as routers count it: limit - spent - reserved, at least 0.

    "-" without a limit (or when an amount is not a decimal).
    """
    cap, used, held = _decimal(limit), _decimal(spent or "0"), _decimal(reserved or "0")
    if cap is None or used is None or held is None:
        return "-"
    return format_decimal(max(cap - used - held, Decimal(0)))


def format_decimal(amount: Decimal) -> str:
    """Without exponent or trailing zeros, as the services write money: 1.50 -> "1.5"."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def window_row(spend: metering_pb2.KeySpend, window: Window) -> list[str]:
    limit: str = getattr(spend.limits, window.limit_field)
    spent: str = getattr(spend, window.spent_field)
    return [window.label, limit or "none", _usd(spent), remaining(limit, spent, spend.reserved_usd)]


def account_lines(output: Output, balance: metering_pb2.AccountBalance) -> None:
    if balance.prepaid:
        output.line(f"account {balance.account_id} (prepaid: its keys spend only its credit)")
        rows = [("credit", balance.credit_usd), ("spent", balance.spent_usd)]
        rows += [("reserved", balance.reserved_usd), ("available", balance.available_usd)]
    else:
        output.line(f"account {balance.account_id} (not prepaid: no credit limit)")
        rows = [("spent", balance.spent_usd), ("reserved", balance.reserved_usd)]
    for label, amount in rows:
        output.line(f"  {label + ':':<10} {_usd(amount)} USD")


def _usd(text: str) -> str:
    return text or "0"


def _decimal(text: str) -> Decimal | None:
    if not text:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None
