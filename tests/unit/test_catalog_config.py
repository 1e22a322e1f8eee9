"""Catalog configuration from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard_catalog.config import CatalogConfig, packaged_seed_path
from switchboard_core.config import ConfigError
from tests.secure import tls_env

DSN = "postgresql://catalog:hunter2@db.example:5432/switchboard"


def env(**values: str) -> dict[str, str]:
    return {"DATABASE_URL": DSN, **tls_env("catalog"), **values}


def test_defaults() -> None:
    config = CatalogConfig.from_env(env())
    assert config.server.service == "catalog"
    assert config.server.grpc_port == 50052
    assert config.server.metrics_port == 9092
    assert config.seed_path == packaged_seed_path()
    assert config.demo_base_url == "http://127.0.0.1:8088/v1"


def test_the_price_history_reaches_as_far_back_as_the_ledger_accepts_events() -> None:
    assert CatalogConfig.from_env(env()).price_history_days == 400
    config = CatalogConfig.from_env(env(SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS="30"))
    assert config.price_history_days == 30


def test_seed_none_skips_seeding_and_a_path_is_used(tmp_path: Path) -> None:
    assert CatalogConfig.from_env(env(SWITCHBOARD_CATALOG_SEED="none")).seed_path is None
    seed = tmp_path / "seed.json"
    seed.write_text("{}")
    config = CatalogConfig.from_env(env(SWITCHBOARD_CATALOG_SEED=str(seed)))
    assert config.seed_path == seed


def test_every_bad_variable_is_reported_together() -> None:
    env = {
        "SWITCHBOARD_GRPC_PORT": "not-a-port",
        "SWITCHBOARD_METRICS_PORT": "70000",
        "SWITCHBOARD_LOG_LEVEL": "LOUD",
        "SWITCHBOARD_CATALOG_SEED": "/no/such/seed.json",
        "SWITCHBOARD_DEMO_BASE_URL": "ftp://127.0.0.1/v1",
    }
    with pytest.raises(ConfigError) as caught:
        CatalogConfig.from_env(env)
    named = {problem.split(":", 1)[0] for problem in caught.value.problems}
    assert named == {
        "DATABASE_URL",
        "SWITCHBOARD_GRPC_PORT",
        "SWITCHBOARD_METRICS_PORT",
        "SWITCHBOARD_LOG_LEVEL",
        "SWITCHBOARD_CATALOG_SEED",
        "SWITCHBOARD_DEMO_BASE_URL",
        "SWITCHBOARD_TLS_CERT",
        "SWITCHBOARD_TLS_KEY",
        "SWITCHBOARD_TLS_CA",
    }


def test_database_password_stays_out_of_repr() -> None:
    config = CatalogConfig.from_env(env())
    assert "hunter2" not in repr(config)
