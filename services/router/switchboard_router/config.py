"""Router configuration, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from switchboard_core.budget import DEFAULT_PREFIX
from switchboard_core.config import EnvReader, Secret, ServerConfig, read_redis_url

# Provider credentials: SWITCHBOARD_PROVIDER_KEY_<PROVIDER ID, "-" written "_">.
PROVIDER_KEY_PREFIX = "SWITCHBOARD_PROVIDER_KEY_"


@dataclass(frozen=True)
class RouterConfig:
    server: ServerConfig
    redis_url: str
    catalog_addr: str
    metering_addr: str
    usage_stream: str = "switchboard:usage"
    key_cache_seconds: float = 30.0
    catalog_wait_seconds: float = 10.0
    max_request_seconds: float = 600.0
    provider_keys: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    budget_prefix: str = DEFAULT_PREFIX
    # Completion tokens reserved when a request sets no max_tokens (and the endpoint's cap
    # is higher or unknown).
    reservation_ceiling_tokens: int = 4096

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        reader = EnvReader(env)
        config = cls(
            server=ServerConfig.read(reader, "router", 50051, 9091),
            redis_url=read_redis_url(reader),
            catalog_addr=reader.address("SWITCHBOARD_CATALOG_ADDR", "127.0.0.1:50052"),
            metering_addr=reader.address("SWITCHBOARD_METERING_ADDR", "127.0.0.1:50053"),
            usage_stream=reader.str("SWITCHBOARD_USAGE_STREAM", "switchboard:usage"),
            key_cache_seconds=reader.float("SWITCHBOARD_KEY_CACHE_SECONDS", 30.0),
            catalog_wait_seconds=reader.float("SWITCHBOARD_CATALOG_WAIT_SECONDS", 10.0),
            max_request_seconds=reader.float("SWITCHBOARD_MAX_REQUEST_SECONDS", 600.0, min_value=1),
            provider_keys=reader.prefixed(PROVIDER_KEY_PREFIX),
            budget_prefix=reader.str("SWITCHBOARD_BUDGET_PREFIX", DEFAULT_PREFIX),
            reservation_ceiling_tokens=reader.int(
                "SWITCHBOARD_RESERVATION_CEILING_TOKENS", 4096, min_value=1
            ),
        )
        reader.finish()
        return config
