"""The official ``openai`` Node SDK against the router's HTTP edge: one streamed and one whole
completion, and a wrong key's 401 (``tests/e2e/edge_node/chat.mjs``), over TLS with the
stack's development CA (``NODE_EXTRA_CA_CERTS``).

The SDK is installed from the npm registry into ``tests/e2e/edge_node/node_modules`` (pinned
by its ``package-lock.json``) when it is not there yet; the test is skipped only when ``node``
and ``npm`` are not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.e2e.support import ledger_entry

pytestmark = [pytest.mark.e2e]

FOLDER = Path(__file__).parent / "edge_node"
INSTALL_SECONDS = 180
RUN_SECONDS = 60


async def run(args: list[str], env: dict[str, str], timeout: float) -> str:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=FOLDER,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{args[0]} took longer than {timeout} s") from None
    assert process.returncode == 0, f"{' '.join(args)} failed:\n{err.decode()[-3000:]}"
    return out.decode()


@pytest.fixture(scope="module")
async def node_sdk() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the Node SDK check needs them")
    if not (FOLDER / "node_modules" / "openai" / "package.json").exists():
        await run([npm, "ci", "--no-audit", "--no-fund"], dict(os.environ), INSTALL_SECONDS)
    return node


async def test_the_openai_node_sdk_streams_and_answers_whole(
    node_sdk: str,
    stack: Stack,
    api_key: metering_pb2.CreateApiKeyResponse,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    env = {
        **os.environ,
        "EDGE_BASE_URL": f"https://127.0.0.1:{stack.ports.router_http}/v1",
        "EDGE_API_KEY": api_key.secret,
        "EDGE_MODEL": "switchboard/demo",
        "NODE_EXTRA_CA_CERTS": str(stack.pki.ca),
    }
    said = json.loads(await run([node_sdk, "chat.mjs"], env, RUN_SECONDS))
    stream, whole = said["stream"], said["whole"]
    assert len(stream["text"].split()) == 5 and stream["text"] == whole["text"]
    assert stream["usage"]["completion_tokens"] == 5
    assert said["badKeyStatus"] == 401
    for told in (stream, whole):
        row = await ledger_entry(metering, told["id"])
        assert row.usage.completion_tokens == told["usage"]["completion_tokens"]
        assert Decimal(row.cost_usd) == Decimal(told["usage"]["cost_usd"])
