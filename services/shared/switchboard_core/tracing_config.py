"""Tracing's settings: the standard OpenTelemetry variables, read once at start-up by each
service's config (:class:`TracingConfig`; every bad value reported with the others). What
they mean is in docs/TRACING.md; :mod:`switchboard_core.tracing` acts on them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from switchboard_core.config import EnvReader, Secret

SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True)
class TracingConfig:
    """Where and how much to trace; ``endpoint`` empty: tracing is off."""

    endpoint: str = field(default="", repr=False)  # the OTLP/HTTP traces URL: may hold a password
    headers: Secret = field(default_factory=lambda: Secret(""))  # "k=v,k2=v2": may hold a token
    timeout_seconds: float = 10.0
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0
    schedule_delay_ms: int = 5000

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    @classmethod
    def read(cls, reader: EnvReader) -> TracingConfig:
        endpoint = _read_endpoint(reader)
        headers = reader.secret(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS", reader.env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
        )
        if parse_pairs(headers.reveal()) is None:
            reader.problems.append("OTEL_EXPORTER_OTLP_HEADERS: expected key=value,key=value")
        sampler = reader.str("OTEL_TRACES_SAMPLER", "parentbased_always_on").lower()
        if sampler not in SAMPLERS:
            reader.problems.append(f"OTEL_TRACES_SAMPLER: one of {', '.join(SAMPLERS)}")
        ratio = reader.float("OTEL_TRACES_SAMPLER_ARG", 1.0)
        if ratio > 1.0:
            reader.problems.append("OTEL_TRACES_SAMPLER_ARG: a ratio from 0 to 1")
        disabled = reader.bool("OTEL_SDK_DISABLED", False)
        return cls(
            endpoint="" if disabled else endpoint,
            headers=headers,
            timeout_seconds=reader.int("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, min_value=1) / 1000,
            sampler=sampler,
            ratio=min(ratio, 1.0),
            schedule_delay_ms=reader.int("OTEL_BSP_SCHEDULE_DELAY", 5000, min_value=1),
        )


def _read_endpoint(reader: EnvReader) -> str:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = reader.str(name, "http/protobuf")
        if protocol != "http/protobuf":
            reader.problems.append(f"{name}: only http/protobuf is supported")
    full = reader.str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    base = reader.str("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    name, url = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", full) if full else ("", "")
    if not full and base:
        name, url = "OTEL_EXPORTER_OTLP_ENDPOINT", base.rstrip("/") + "/v1/traces"
    if url and not re.match(r"https?://[^/?#\s]+", url):
        reader.problems.append(f"{name}: expected an http:// or https:// URL")
    return url


def parse_pairs(raw: str) -> dict[str, str] | None:
    """``k=v,k2=v2`` (the OTLP headers format); None when malformed."""
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            return None
        pairs[key.strip().lower()] = value.strip()
    return pairs
