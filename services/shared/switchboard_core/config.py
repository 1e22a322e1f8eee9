"""Configuration from the environment, parsed and validated once at start-up.

Every service builds a frozen dataclass with an :class:`EnvReader`. The reader collects every
missing or bad variable and :meth:`EnvReader.finish` raises one :class:`ConfigError` naming them
all. Nothing else in the code base reads the environment.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from switchboard_core.usage_outbox import MAX_USAGE_STREAMS, stream_problem, streams_problem

if TYPE_CHECKING:
    from switchboard_core.tls import TlsConfig


class ConfigError(Exception):
    """One or more environment variables are missing or invalid."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class EnvReader:
    """Reads typed values from an environment mapping, collecting every problem."""

    def __init__(self, env: Mapping[builtins.str, builtins.str] | None = None) -> None:
        self.env: Mapping[builtins.str, builtins.str] = os.environ if env is None else env
        self.problems: list[builtins.str] = []

    def _raw(self, name: builtins.str, default: builtins.str | None) -> builtins.str | None:
        value = self.env.get(name)
        if value is None or value == "":
            if default is None:
                self.problems.append(f"{name}: required but not set")
            return default
        return value

    def str(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str:
        return self._raw(name, default) or ""

    def secret(self, name: builtins.str, default: builtins.str = "") -> Secret:
        return Secret(self.env.get(name, default))

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = (self._raw(name, "true" if default else "false") or "").lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}: expected true or false, got {raw!r}")
        return default

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        min_value: builtins.int = 0,
        max_value: builtins.int = 2**31,
    ) -> builtins.int:
        raw = self._raw(name, str(default))
        try:
            value = int(raw or "")
        except ValueError:
            self.problems.append(f"{name}: expected an integer, got {raw!r}")
            return default
        if not min_value <= value <= max_value:
            self.problems.append(f"{name}: must be between {min_value} and {max_value}")
        return value

    def float(
        self, name: builtins.str, default: builtins.float, *, min_value: builtins.float = 0.0
    ) -> builtins.float:
        raw = self._raw(name, str(default))
        try:
            value = float(raw or "")
        except ValueError:
            self.problems.append(f"{name}: expected a number, got {raw!r}")
            return default
        if value < min_value:
            self.problems.append(f"{name}: must be at least {min_value}")
        return value

    def url(
        self,
        name: builtins.str,
        schemes: tuple[builtins.str, ...],
        default: builtins.str | None = None,
    ) -> builtins.str:
        raw = self._raw(name, default)
        if raw is None:
            return ""
        if urlsplit(raw).scheme not in schemes:
            self.problems.append(f"{name}: expected a URL with scheme {'/'.join(schemes)}")
        return raw

    def address(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str:
        raw = self._raw(name, default)
        if raw is None:
            return ""
        host, _, port = raw.rpartition(":")
        if not host or not port.isdigit():
            self.problems.append(f"{name}: expected host:port, got {raw!r}")
        return raw

    def prefixed(self, prefix: builtins.str) -> dict[builtins.str, Secret]:
        """Every variable starting with ``prefix``, keyed by the rest lower-cased."""
        return {
            key[len(prefix) :].lower(): Secret(value)
            for key, value in self.env.items()
            if key.startswith(prefix) and value
        }

    def csv(self, name: builtins.str) -> tuple[builtins.str, ...]:
        """A comma-separated list (empty when unset); blank items are dropped."""
        return _split_csv(self.env.get(name, ""))

    def prefixed_csv(self, prefix: builtins.str) -> dict[builtins.str, tuple[builtins.str, ...]]:
        """Every variable starting with ``prefix`` as a comma-separated list, keyed by the
        rest lower-cased."""
        return {
            key[len(prefix) :].lower(): _split_csv(value)
            for key, value in self.env.items()
            if key.startswith(prefix) and value
        }

    def finish(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _split_csv(raw: str) -> tuple[str, ...]:
    return tuple(item for item in (part.strip() for part in raw.split(",")) if item)


def _no_tls() -> TlsConfig:
    from switchboard_core.tls import TlsConfig

    return TlsConfig()


EVENT_LOOPS = ("uvloop", "asyncio")
# uvloop: 2-8% less router CPU per completion (issue 12, docs/BENCHMARKS.md); its one fault
# path that differs from asyncio's is mapped at the Redis boundary (switchboard_core.event_loop).
DEFAULT_EVENT_LOOP = "uvloop"


@dataclass(frozen=True)
class ServerConfig:
    """What every service's process needs to serve gRPC and metrics."""

    service: str
    host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = 0
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 10.0
    extra: Mapping[str, str] = field(default_factory=dict)
    # How the service serves (and, for catalog and metering, calls): see switchboard_core.tls.
    tls: TlsConfig = field(default_factory=_no_tls)
    # How often the serving status checks the service's dependencies (its database), and how
    # long one check may take: see switchboard_core.health.
    health_probe_seconds: float = 5.0
    health_probe_timeout_seconds: float = 2.0
    # A second, plaintext port serving only grpc.health.v1 (kubelet's grpc probes speak no
    # TLS); None: none.
    health_port: int | None = None
    # The asyncio event loop the process runs on (SWITCHBOARD_EVENT_LOOP): see
    # switchboard_core.event_loop.
    event_loop: str = DEFAULT_EVENT_LOOP

    @classmethod
    def read(
        cls, reader: EnvReader, service: str, default_grpc_port: int, default_metrics_port: int
    ) -> ServerConfig:
        from switchboard_core.tls import TlsConfig

        level = read_log_level(reader)
        return cls(
            service=service,
            host=reader.str("SWITCHBOARD_HOST", "127.0.0.1"),
            grpc_port=reader.int("SWITCHBOARD_GRPC_PORT", default_grpc_port, max_value=65535),
            metrics_port=reader.int(
                "SWITCHBOARD_METRICS_PORT", default_metrics_port, max_value=65535
            ),
            log_level=level,
            shutdown_grace_seconds=reader.float("SWITCHBOARD_SHUTDOWN_GRACE_SECONDS", 10.0),
            tls=TlsConfig.read(reader),
            health_probe_seconds=_at_most(
                reader, "SWITCHBOARD_HEALTH_PROBE_SECONDS", 5.0, 0.05, 300.0
            ),
            health_probe_timeout_seconds=_at_most(
                reader, "SWITCHBOARD_HEALTH_PROBE_TIMEOUT_SECONDS", 2.0, 0.05, 60.0
            ),
            health_port=read_port_or_off(reader, "SWITCHBOARD_HEALTH_PORT", None),
            event_loop=read_event_loop(reader),
        )


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def read_log_level(reader: EnvReader) -> str:
    """SWITCHBOARD_LOG_LEVEL (any case): one of :data:`LOG_LEVELS`; INFO (and a problem
    recorded) otherwise. Services and the workers' supervisor read it here."""
    level = reader.str("SWITCHBOARD_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        reader.problems.append(f"SWITCHBOARD_LOG_LEVEL: one of {', '.join(LOG_LEVELS)}")
        return "INFO"
    return level


def read_event_loop(reader: EnvReader) -> str:
    """SWITCHBOARD_EVENT_LOOP: ``uvloop`` (libuv's, the default) or ``asyncio`` (the standard
    library's loop)."""
    name = reader.str("SWITCHBOARD_EVENT_LOOP", DEFAULT_EVENT_LOOP).strip().lower()
    if name not in EVENT_LOOPS:
        reader.problems.append(f"SWITCHBOARD_EVENT_LOOP: one of {', '.join(EVENT_LOOPS)}")
        return DEFAULT_EVENT_LOOP
    return name


def read_port_or_off(reader: EnvReader, name: str, default: int | None) -> int | None:
    """A port (0: any free one), or None when the variable says "off" (or is unset and the
    default is None)."""
    raw = reader.str(name, "off" if default is None else str(default)).strip().lower()
    if raw == "off":
        return None
    return reader.int(name, default or 0, max_value=65535)


def _at_most(reader: EnvReader, name: str, default: float, low: float, high: float) -> float:
    value = reader.float(name, default, min_value=low)
    if value > high:
        reader.problems.append(f"{name}: must be at most {high}")
    return value


def read_database_url(reader: EnvReader) -> str:
    return reader.url("DATABASE_URL", ("postgres", "postgresql"))


def read_redis_url(reader: EnvReader) -> str:
    return reader.url("REDIS_URL", ("redis", "rediss", "unix"))


def read_redis_cluster(reader: EnvReader) -> bool:
    """``SWITCHBOARD_REDIS_CLUSTER``: ``REDIS_URL`` names a node of a Redis Cluster
    (:func:`switchboard_core.redis_client.create_redis`)."""
    return reader.bool("SWITCHBOARD_REDIS_CLUSTER", False)


def read_usage_stream(reader: EnvReader, default: str) -> str:
    """``SWITCHBOARD_USAGE_STREAM``: the usage outbox, whose hash slot routers' in-flight
    records share (:mod:`switchboard_core.usage_outbox`)."""
    name = "SWITCHBOARD_USAGE_STREAM"
    stream = reader.str(name, default)
    if (problem := stream_problem(stream)) is not None:
        reader.problems.append(f"{name}: {problem}")
    return stream


def read_usage_streams(reader: EnvReader, stream: str) -> int:
    """``SWITCHBOARD_USAGE_STREAMS``: how many streams the routers split the usage outbox
    ``stream`` into (1: not split; :mod:`switchboard_core.usage_outbox`)."""
    name = "SWITCHBOARD_USAGE_STREAMS"
    count = reader.int(name, 1, min_value=1, max_value=MAX_USAGE_STREAMS)
    if (problem := streams_problem(stream, count)) is not None:
        reader.problems.append(f"{name}: {problem}")
    return count
