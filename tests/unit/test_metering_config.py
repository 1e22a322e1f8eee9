"""Metering configuration from the environment."""

from __future__ import annotations

from datetime import timedelta

import pytest

from switchboard_core.config import ConfigError
from switchboard_metering.config import MeteringConfig

GOOD = {
    "DATABASE_URL": "postgresql://user:hunter2@db:5432/switchboard",
    "REDIS_URL": "redis://:hunter2@redis:6379/0",
}


def test_defaults() -> None:
    config = MeteringConfig.from_env(GOOD)
    assert (config.server.grpc_port, config.server.metrics_port) == (50053, 9093)
    assert (config.outbox.stream, config.outbox.group) == ("switchboard:usage", "metering")
    assert config.outbox.dead_letter_stream == "switchboard:usage:dead"
    assert config.database_url == GOOD["DATABASE_URL"]
    assert config.retention == timedelta(days=400)


def test_retention_zero_keeps_the_ledger_forever_and_negative_is_refused() -> None:
    assert (
        MeteringConfig.from_env({**GOOD, "SWITCHBOARD_LEDGER_RETENTION_DAYS": "0"}).retention
        is None
    )
    with pytest.raises(ConfigError) as caught:
        MeteringConfig.from_env({**GOOD, "SWITCHBOARD_LEDGER_RETENTION_DAYS": "-3"})
    assert caught.value.problems == [
        "SWITCHBOARD_LEDGER_RETENTION_DAYS: must be between 0 and 36500"
    ]


def test_overrides() -> None:
    config = MeteringConfig.from_env(
        {
            **GOOD,
            "SWITCHBOARD_USAGE_STREAM": "s",
            "SWITCHBOARD_USAGE_GROUP": "g",
            "SWITCHBOARD_GRPC_PORT": "6000",
        }
    )
    assert (config.outbox.stream, config.outbox.group, config.server.grpc_port) == ("s", "g", 6000)


def test_every_bad_variable_is_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        MeteringConfig.from_env(
            {
                "REDIS_URL": "http://not-redis",
                "SWITCHBOARD_GRPC_PORT": "seventy",
                "SWITCHBOARD_METRICS_PORT": "70000",
                "SWITCHBOARD_LOG_LEVEL": "chatty",
            }
        )
    named = {problem.split(":")[0] for problem in caught.value.problems}
    assert named == {
        "DATABASE_URL",
        "REDIS_URL",
        "SWITCHBOARD_GRPC_PORT",
        "SWITCHBOARD_METRICS_PORT",
        "SWITCHBOARD_LOG_LEVEL",
    }


def test_urls_with_passwords_stay_out_of_repr() -> None:
    assert "hunter2" not in repr(MeteringConfig.from_env(GOOD))


def test_consumer_names_are_unique_per_process() -> None:
    first, second = MeteringConfig.from_env(GOOD), MeteringConfig.from_env(GOOD)
    assert first.outbox.consumer != second.outbox.consumer
