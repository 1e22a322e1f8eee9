"""Through the real processes and the CLI: an operator's credit grant is in the audit log with
the operator key's id and the amount, and metering's log line names them too."""

from __future__ import annotations

import json
import uuid

import pytest

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.fakes.cli_servers import cli

pytestmark = [pytest.mark.e2e]


async def test_an_operators_credit_grant_is_audited_and_listed_by_the_cli(
    stack: Stack,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    operator = await metering.CreateOperatorKey(
        metering_pb2.CreateOperatorKeyRequest(
            name="finance", scopes=["credits:write", "audit:read"]
        )
    )
    account = f"audited-{uuid.uuid4().hex[:8]}"
    async with stack.channel("metering", bearer=operator.secret) as channel:
        await metering_pb2_grpc.MeteringServiceStub(channel).AddCredits(
            metering_pb2.AddCreditsRequest(account_id=account, amount_usd="42.50", note="inv-9")
        )

    env = {
        "SWITCHBOARD_METERING_ADDR": stack.address("metering"),
        "SWITCHBOARD_CATALOG_ADDR": stack.address("catalog"),
        "SWITCHBOARD_ADMIN_KEY": operator.secret,
    }
    capsys.readouterr()
    code = await cli("audit", "--target", account, "--json", env=env)
    out, err = capsys.readouterr()
    assert code == 0, err  # both services answered: the catalog checked the key with metering
    (event,) = json.loads(out)["events"]
    assert event["service"] == "metering"
    assert event["actor"] == f"operator:{operator.operator_key.id}"
    assert event["rpc"] == "/switchboard.metering.v1.MeteringService/AddCredits"
    assert event["target"] == f"account:{account}"
    assert event["change"]["request"]["amount_usd"] == "42.50"
    assert event["change"]["request"]["note"] == "inv-9"

    code = await cli("audit", "--service", "metering", "--target", account, env=env)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"operator:{operator.operator_key.id}" in out
    assert "amount_usd=42.50" in out
    assert operator.secret not in out

    assert stack.log_dir is not None
    lines = [
        json.loads(line)
        for line in (stack.log_dir / "metering.log").read_text().splitlines()
        if line.startswith("{") and '"credits added"' in line and account in line
    ]
    assert [(line["actor"], line["amount_usd"]) for line in lines] == [
        (f"operator:{operator.operator_key.id}", "42.5")
    ]


async def test_a_catalog_change_is_in_the_catalogs_log_only(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    async with stack.channel("catalog") as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        listed = await stub.ListProviders(catalog_pb2.ListProvidersRequest())
        provider = listed.providers[0]
        provider.display_name = f"Renamed {uuid.uuid4().hex[:6]}"
        await stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    env = {
        "SWITCHBOARD_METERING_ADDR": stack.address("metering"),
        "SWITCHBOARD_CATALOG_ADDR": stack.address("catalog"),
        "SWITCHBOARD_ADMIN_KEY": stack.admin_key,
    }
    capsys.readouterr()
    code = await cli("audit", "--rpc", "UpsertProvider", "--json", env=env)
    out, err = capsys.readouterr()
    assert code == 0, err
    events = json.loads(out)["events"]
    assert events[0]["service"] == "catalog"
    assert events[0]["target"] == f"provider:{provider.id}"
    assert events[0]["change"]["request"]["provider"]["display_name"] == provider.display_name
