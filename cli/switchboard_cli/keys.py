"""``switchboard keys create|list|revoke|limits``: API keys, kept by the metering service.

``keys create`` may give a key an expiry (``--expires-in-days``) and allow-lists of models
(``--model``) and providers (``--provider``), which routers enforce.

``keys limits`` lives with credits and balances in :mod:`switchboard_cli.budgets`. A key's rate
limits, and its account's, read as :mod:`switchboard_cli.rate_limits` writes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_cli import budgets, rate_limits
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.output import Output, format_time, to_dict
from switchboard_cli.paging import PAGE_SIZE, collect

# --expires-in-days at most (about 100 years).
MAX_DAYS = 36_500


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    keys = commands.add_parser("keys", help="create, list, revoke and limit API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", parents=[common], help="create a key (secret shown once)")
    create.add_argument("--account", required=True, help="account id; created when new")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument(
        "--expires-in-days", type=positive_days, metavar="N",
        help="the key stops working N days from now (default: never)",
    )  # fmt: skip
    create.add_argument(
        "--model", dest="models", action="append", default=[], metavar="MODEL",
        help="allow only this model (repeat for more; default: any), e.g. openai/gpt-4o-mini",
    )  # fmt: skip
    create.add_argument(
        "--provider", dest="providers", action="append", default=[], metavar="PROVIDER",
        help="allow only this provider's endpoints (repeat for more; default: any)",
    )  # fmt: skip
    create.set_defaults(handler=create_key, service="metering")

    listing = actions.add_parser("list", parents=[common], help="list an account's keys")
    listing.add_argument("--account", required=True, help="account id")
    listing.set_defaults(handler=list_keys, service="metering")

    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id", metavar="KEY_ID", help="e.g. key_0123456789abcdef")
    revoke.set_defaults(handler=revoke_key, service="metering")

    budgets.register_limits(actions, common)


def positive_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"a whole number of days from 1 to {MAX_DAYS}")
    return days


async def create_key(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    request = metering_pb2.CreateApiKeyRequest(
        account_id=args.account,
        name=args.name,
        allowed_models=args.models,
        allowed_providers=args.providers,
    )
    if args.expires_in_days is not None:
        request.expire_time.FromDatetime(datetime.now(UTC) + timedelta(days=args.expires_in_days))
    response = await stub.CreateApiKey(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    key = response.api_key
    output.line(f"secret:    {response.secret}")
    output.line(f"id:        {key.id}")
    output.line(f"prefix:    {key.prefix}")
    output.line(f"account:   {key.account_id}")
    if key.HasField("expire_time"):
        output.line(f"expires:   {format_time(key.expire_time)} UTC")
    if key.allowed_models:
        output.line(f"models:    {', '.join(key.allowed_models)}")
    if key.allowed_providers:
        output.line(f"providers: {', '.join(key.allowed_providers)}")
    if rate_limits.enforced(key.account_rate_limits):
        output.line(f"account rate limits: {rate_limits.summary(key.account_rate_limits)}")
    output.note("Store the secret now: it is shown only once. Use it with --api-key or")
    output.note("SWITCHBOARD_API_KEY.")
    return 0


async def list_keys(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = metering_pb2_grpc.MeteringServiceStub(channel)

    async def fetch(token: str) -> tuple[Sequence[metering_pb2.ApiKey], str]:
        request = metering_pb2.ListApiKeysRequest(
            account_id=args.account, page_size=PAGE_SIZE, page_token=token
        )
        response = await stub.ListApiKeys(request, timeout=UNARY_TIMEOUT)
        return response.api_keys, response.next_page_token

    keys = await collect(fetch)
    if output.json:
        output.emit({"api_keys": [to_dict(key) for key in keys]})
        return 0
    if not keys:
        output.note(f"account {args.account} has no keys")
        return 0
    rows = [
        [k.id, k.name, k.prefix, format_time(k.create_time), _rates(k), _state(k)] for k in keys
    ]
    output.table(["ID", "NAME", "PREFIX", "CREATED (UTC)", "RATE LIMITS", "STATE"], rows)
    shared = keys[0].account_rate_limits  # the account's: the same on each of its keys
    if rate_limits.enforced(shared):
        output.line(f"account {args.account} rate limits: {rate_limits.summary(shared)}")
    return 0


async def revoke_key(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    request = metering_pb2.RevokeApiKeyRequest(key_id=args.key_id)
    response = await stub.RevokeApiKey(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    key = response.api_key
    output.line(f"revoked {key.id} ({key.prefix}...) at {format_time(key.revoke_time)} UTC")
    return 0


def _rates(key: metering_pb2.ApiKey) -> str:
    return rate_limits.summary(key.rate_limits) if rate_limits.enforced(key.rate_limits) else "-"


def _state(key: metering_pb2.ApiKey, now: datetime | None = None) -> str:
    if key.HasField("revoke_time"):
        return f"revoked {format_time(key.revoke_time)}"
    if key.HasField("expire_time"):
        expired = key.expire_time.ToDatetime(tzinfo=UTC) <= (now or datetime.now(UTC))
        return f"{'expired' if expired else 'expires'} {format_time(key.expire_time)}"
    return "active"
