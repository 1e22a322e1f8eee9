"""No service's configuration shows a secret in its ``repr`` or ``str`` (which is what a log line
or a traceback prints): not a password inside a URL, not a provider key, not a header token."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from switchboard_catalog.config import CatalogConfig
from switchboard_metering.config import MeteringConfig
from switchboard_router.config import RouterConfig
from tests.secure import tls_env

PASSWORD = "hunter2-Zq9"
# Every variable a service reads that holds a URL, each with a password in it.
URLS = {
    "DATABASE_URL": f"postgresql://switchboard:{PASSWORD}@db:5432/switchboard",
    "REDIS_URL": f"redis://:{PASSWORD}@redis:6379/0",
    "SWITCHBOARD_DEMO_BASE_URL": f"http://demo:{PASSWORD}@demo:8000/v1",
    "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://otel:{PASSWORD}@collector:4318",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"https://otel:{PASSWORD}@collector:4318/v1/traces",
}
OTHER_SECRETS = {
    "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {PASSWORD}",
    "SWITCHBOARD_PROVIDER_KEY_OPENAI": f"sk-{PASSWORD}",
}
# Names that say a variable holds a URL: one the test does not set is a setting it would miss.
URL_SUFFIXES = ("_URL", "_ENDPOINT", "_DSN", "_URI")


class Recording(Mapping[str, str]):
    """An environment that remembers every variable it was asked for."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self._env[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


READERS: dict[str, tuple[Callable[[Mapping[str, str]], object], str]] = {
    "router": (RouterConfig.from_env, "router"),
    "catalog": (CatalogConfig.from_env, "catalog"),
    "metering": (MeteringConfig.from_env, "metering"),
}


@pytest.mark.parametrize("service", sorted(READERS))
def test_no_config_repr_shows_a_password_from_its_urls(service: str) -> None:
    read, tls_service = READERS[service]
    env = Recording({**tls_env(tls_service), **URLS, **OTHER_SECRETS})
    config = read(env)
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)
    unset = sorted(name for name in env.asked if name.endswith(URL_SUFFIXES) and name not in URLS)
    assert not unset, f"{service} reads URL settings this test does not cover: {unset}"


def test_the_urls_are_still_read_in_full() -> None:
    """Hidden from ``repr``, not dropped: the services still connect with the password."""
    env = {**tls_env("metering"), **URLS}
    metering = MeteringConfig.from_env(env)
    assert (metering.database_url, metering.redis_url) == (URLS["DATABASE_URL"], URLS["REDIS_URL"])
    catalog = CatalogConfig.from_env({**tls_env("catalog"), **URLS})
    assert catalog.demo_base_url == URLS["SWITCHBOARD_DEMO_BASE_URL"]
    router = RouterConfig.from_env({**tls_env("router"), **URLS})
    assert router.redis_url == URLS["REDIS_URL"]
    assert router.tracing.endpoint == URLS["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
