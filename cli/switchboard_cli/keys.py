"""``switchboard keys create|list|revoke|limits``: API keys, kept by the metering service.

``keys limits`` lives with credits and balances in :mod:`switchboard_cli.budgets`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_cli import budgets
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.output import Output, format_time, to_dict
from switchboard_cli.paging import PAGE_SIZE, collect


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    keys = commands.add_parser("keys", help="create, list, revoke and limit API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", parents=[common], help="create a key (secret shown once)")
    create.add_argument("--account", required=True, help="account id; created when new")
    create.add_argument("--name", default="", help="a label for the key")
    create.set_defaults(handler=create_key, service="metering")

    listing = actions.add_parser("list", parents=[common], help="list an account's keys")
    listing.add_argument("--account", required=True, help="account id")
    listing.set_defaults(handler=list_keys, service="metering")

    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id", metavar="KEY_ID", help="e.g. key_0123456789abcdef")
    revoke.set_defaults(handler=revoke_key, service="metering")

    budgets.register_limits(actions, common)


async def create_key(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    request = metering_pb2.CreateApiKeyRequest(account_id=args.account, name=args.name)
    response = await stub.CreateApiKey(request, timeout=UNARY_TIMEOUT)
    if output.json:
        output.emit(response)
        return 0
    output.line(f"secret:  {response.secret}")
    output.line(f"id:      {response.api_key.id}")
    output.line(f"prefix:  {response.api_key.prefix}")
    output.line(f"account: {response.api_key.account_id}")
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
    rows = [[k.id, k.name, k.prefix, format_time(k.create_time), _state(k)] for k in keys]
    output.table(["ID", "NAME", "PREFIX", "CREATED (UTC)", "STATE"], rows)
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


def _state(key: metering_pb2.ApiKey) -> str:
    if key.HasField("revoke_time"):
        return f"revoked {format_time(key.revoke_time)}"
    return "active"
