"""``switchboard generation`` against a real metering service: the ledger row as a person reads
it, as JSON, and a clear error for an unknown id."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from switchboard.metering.v1 import metering_pb2
from tests.fakes.cli_servers import cli
from tests.integration.test_metering_app import (
    Metering,
    new_key_id,
    running_metering,
    test_settings,
    usage_event,
)

WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    async with running_metering(database_url, redis_url, test_settings(redis_prefix)) as running:
        yield running


async def test_a_generation_reads_like_a_bill(
    metering: Metering, capsys: pytest.CaptureFixture[str]
) -> None:
    event = usage_event(new_key_id(), when=WHEN, cost="0.00123", prompt=10, completion=5)
    event.attempt = 1
    await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[event]))
    address = f"127.0.0.1:{metering.server.port}"

    assert (
        await cli(
            "--metering",
            address,
            "--admin-key",
            metering.admin_key,
            "generation",
            event.generation_id,
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"generation:   {event.generation_id}",
        "created:      2026-03-04 05:06:07 UTC",
        f"key:          {event.key_id} (account acct)",
        "model:        demo/echo",
        "provider:     demo, endpoint demo:demo/echo, attempt 1",
        "status:       completed, finish stop (stop)",
        "tokens:       10 prompt + 5 completion (5 cached, 1 cache-write, 2 reasoning)",
        "cost:         0.00123 USD",
        "timing:       1200 ms, first token after 150 ms, 4.8 tokens/s",
    ]

    assert (
        await cli(
            "--metering",
            address,
            "--admin-key",
            metering.admin_key,
            "--json",
            "generation",
            event.generation_id,
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["generation"]["cost_usd"] == "0.00123"
    assert data["tokens_per_second"] == pytest.approx(5 / 1.05)


async def test_an_unknown_generation_is_a_clear_error(
    metering: Metering, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{metering.server.port}"
    assert (
        await cli(
            "--metering", address, "--admin-key", metering.admin_key, "generation", "gen-nope"
        )
        == 1
    )
    assert capsys.readouterr().err == (
        "switchboard: error: NOT_FOUND: generation 'gen-nope' not found\n"
    )
