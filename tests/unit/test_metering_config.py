"""Metering configuration from the environment."""

from __future__ import annotations

from datetime import timedelta

import pytest

from switchboard_core.config import ConfigError
from switchboard_metering.config import MeteringConfig
from tests.secure import tls_env

GOOD = {
    "DATABASE_URL": "postgresql://user:hunter2@db:5432/switchboard",
    "REDIS_URL": "redis://:hunter2@redis:6379/0",
    **tls_env("metering"),
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
                "SWITCHBOARD_TLS_CERT": "/no/such/cert.pem",
            }
        )
    named = {problem.split(":")[0] for problem in caught.value.problems}
    assert named == {
        "DATABASE_URL",
        "REDIS_URL",
        "SWITCHBOARD_GRPC_PORT",
        "SWITCHBOARD_METRICS_PORT",
        "SWITCHBOARD_LOG_LEVEL",
        "SWITCHBOARD_TLS_CERT",  # unreadable
        "SWITCHBOARD_TLS_KEY",  # missing
        "SWITCHBOARD_TLS_CA",
    }


def test_urls_with_passwords_stay_out_of_repr() -> None:
    assert "hunter2" not in repr(MeteringConfig.from_env(GOOD))


def test_consumer_names_are_unique_per_process() -> None:
    first, second = MeteringConfig.from_env(GOOD), MeteringConfig.from_env(GOOD)
    assert first.outbox.consumer != second.outbox.consumer


def test_the_usage_event_window_defaults_and_overrides() -> None:
    window = MeteringConfig.from_env(GOOD).event_window
    assert (window.max_age, window.max_skew) == (timedelta(days=400), timedelta(minutes=5))
    config = MeteringConfig.from_env(
        {
            **GOOD,
            "SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS": "30",
            "SWITCHBOARD_LEDGER_MAX_CLOCK_SKEW_SECONDS": "0",
        }
    )
    assert (config.event_window.max_age, config.event_window.max_skew) == (
        timedelta(days=30),
        timedelta(0),
    )
    with pytest.raises(ConfigError) as caught:
        MeteringConfig.from_env({**GOOD, "SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS": "0"})
    assert caught.value.problems == [
        "SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS: must be between 1 and 36500"
    ]


def test_the_price_check_settings() -> None:
    config = MeteringConfig.from_env(GOOD)
    assert config.catalog_addr == "127.0.0.1:50052"
    assert config.price_lag == 600 + 3600  # the routers' longest request, plus catalog lag
    assert (config.price_settle_seconds, config.catalog_wait_seconds) == (10.0, 10.0)
    config = MeteringConfig.from_env(
        {
            **GOOD,
            "SWITCHBOARD_CATALOG_ADDR": "catalog:50052",
            "SWITCHBOARD_MAX_REQUEST_SECONDS": "120",
            "SWITCHBOARD_LEDGER_PRICE_LAG_SECONDS": "30",
            "SWITCHBOARD_LEDGER_PRICE_SETTLE_SECONDS": "2.5",
        }
    )
    assert (config.catalog_addr, config.price_lag, config.price_settle_seconds) == (
        "catalog:50052",
        150,
        2.5,
    )
    with pytest.raises(ConfigError) as caught:
        MeteringConfig.from_env(
            {
                **GOOD,
                "SWITCHBOARD_CATALOG_ADDR": "catalog",
                "SWITCHBOARD_LEDGER_PRICE_LAG_SECONDS": "-1",
                "SWITCHBOARD_LEDGER_PRICE_SETTLE_SECONDS": "0",
            }
        )
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "SWITCHBOARD_CATALOG_ADDR",
        "SWITCHBOARD_LEDGER_PRICE_LAG_SECONDS",
        "SWITCHBOARD_LEDGER_PRICE_SETTLE_SECONDS",
    ]


def test_redis_cluster_mode_and_a_usage_stream_its_records_can_share_a_slot_with() -> None:
    assert MeteringConfig.from_env(GOOD).redis_cluster is False
    clustered = MeteringConfig.from_env(
        {**GOOD, "SWITCHBOARD_REDIS_CLUSTER": "true", "SWITCHBOARD_USAGE_STREAM": "{sb}:usage"}
    )
    assert clustered.redis_cluster and clustered.outbox.stream == "{sb}:usage"
    with pytest.raises(ConfigError) as caught:
        MeteringConfig.from_env(
            {**GOOD, "SWITCHBOARD_REDIS_CLUSTER": "maybe", "SWITCHBOARD_USAGE_STREAM": "a}b"}
        )
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "SWITCHBOARD_REDIS_CLUSTER",
        "SWITCHBOARD_USAGE_STREAM",
    ]
