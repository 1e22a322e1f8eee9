"""Settings every service reads: the plaintext health-only port."""

from __future__ import annotations

import pytest

from switchboard_core.config import ConfigError, EnvReader, ServerConfig


def health_port(value: str | None) -> int | None:
    env = {"SWITCHBOARD_INSECURE_PLAINTEXT": "true"}
    if value is not None:
        env["SWITCHBOARD_HEALTH_PORT"] = value
    reader = EnvReader(env)
    config = ServerConfig.read(reader, "catalog", 50052, 9092)
    reader.finish()
    return config.health_port


@pytest.mark.parametrize(("value", "port"), [(None, None), ("off", None), ("0", 0), ("8086", 8086)])
def test_the_health_port_is_off_unless_asked_for(value: str | None, port: int | None) -> None:
    assert health_port(value) == port


@pytest.mark.parametrize("value", ["health", "-1", "65536"])
def test_a_bad_health_port_is_reported_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match="SWITCHBOARD_HEALTH_PORT"):
        health_port(value)
