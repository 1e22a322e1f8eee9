"""``make run`` keeps its API key between starts: the same key while the router accepts it, a
new one (saved again) once it was revoked or its file is unreadable; always for the
``devstack`` account, in a file only its owner reads."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_devstack.__main__ import ACCOUNT, devstack_key
from switchboard_devstack.stack import Stack

pytestmark = [pytest.mark.e2e]


async def keys_of_account(metering: metering_pb2_grpc.MeteringServiceAsyncStub) -> set[str]:
    reply = await metering.ListApiKeys(
        metering_pb2.ListApiKeysRequest(account_id=ACCOUNT, page_size=500), timeout=10
    )
    return {key.id for key in reply.api_keys if not key.HasField("revoke_time")}


async def test_make_run_reuses_its_key_until_it_stops_working(
    stack: Stack, metering: metering_pb2_grpc.MeteringServiceAsyncStub, tmp_path: Path
) -> None:
    path = tmp_path / "api-key"
    before = await keys_of_account(metering)
    secret, key_id = await devstack_key(stack, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"secret": secret, "id": key_id, "account": ACCOUNT}
    assert await devstack_key(stack, path) == (secret, key_id)  # a second start: the same key
    assert await keys_of_account(metering) == before | {key_id}  # and no new one minted

    await metering.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=key_id), timeout=10)
    renewed = await devstack_key(stack, path)
    assert renewed[1] != key_id
    assert json.loads(path.read_text())["id"] == renewed[1]

    path.write_text("not json")
    assert (await devstack_key(stack, path))[1] not in (key_id, renewed[1])
