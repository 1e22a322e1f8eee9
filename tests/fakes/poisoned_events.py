"""Poisoned usage events: each a change that turns an honest ``UsageEvent`` into one the
ledger must refuse, with the field the refusal must name.

Every case comes from the ledger audit: token counts that overflow the rollups (2**63 - 10,
2**62), an ``attempt`` that overflows Postgres ``integer``, dates that would create partitions
for far-off months (years 1, 1970, 9999) or sit in the future, NUL and other control
characters in every string that reaches Postgres, absurd or malformed costs, negative numbers
and unknown enum values. Each change sets every value it relies on, so it applies to any
honest event (the unit tests' and the integration tests' alike).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from switchboard.metering.v1 import metering_pb2

Poison = Callable[[metering_pb2.UsageEvent], None]

TEXT_FIELDS = (
    "generation_id",
    "key_id",
    "account_id",
    "model_id",
    "provider_id",
    "endpoint_id",
    "upstream_model",
    "native_finish_reason",
)


@dataclass(frozen=True)
class Case:
    name: str
    poison: Poison
    field: str  # the field the refusal names, under the event's path

    def apply(self, event: metering_pb2.UsageEvent) -> metering_pb2.UsageEvent:
        """A poisoned copy of ``event`` (the original is left alone)."""
        copy = metering_pb2.UsageEvent()
        copy.CopyFrom(event)
        self.poison(copy)
        return copy


def _set(**values: object) -> Poison:
    def poison(event: metering_pb2.UsageEvent) -> None:
        for name, value in values.items():
            setattr(event, name, value)

    return poison


def _usage(**values: int) -> Poison:
    def poison(event: metering_pb2.UsageEvent) -> None:
        usage = event.usage
        usage.prompt_tokens, usage.completion_tokens = 10, 5
        usage.cached_tokens = usage.reasoning_tokens = usage.cache_write_tokens = 0
        usage.cache_write_1h_tokens = usage.cached_audio_tokens = 0
        usage.audio_prompt_tokens = usage.image_prompt_tokens = usage.video_prompt_tokens = 0
        usage.audio_completion_tokens = usage.web_searches = usage.input_images = 0
        for name, value in values.items():
            setattr(usage, name, value)

    return poison


def _dated(when: Callable[[], datetime]) -> Poison:
    def poison(event: metering_pb2.UsageEvent) -> None:
        event.create_time.FromDatetime(when())

    return poison


def _undated(event: metering_pb2.UsageEvent) -> None:
    event.ClearField("create_time")


def _costing(cost: str) -> Poison:
    def poison(event: metering_pb2.UsageEvent) -> None:
        _usage()(event)  # 15 tokens and the request: at most $1.60 at $0.10 a unit
        event.cost_usd = cost

    return poison


def _now() -> datetime:
    return datetime.now(UTC)


CASES: tuple[Case, ...] = (
    Case("prompt 2^63-10", _usage(prompt_tokens=2**63 - 10), "usage.prompt_tokens"),
    Case("prompt 2^62", _usage(prompt_tokens=2**62), "usage.prompt_tokens"),
    Case("prompt over 20M", _usage(prompt_tokens=20_000_001), "usage.prompt_tokens"),
    Case("completion 2^62", _usage(completion_tokens=2**62), "usage.completion_tokens"),
    Case("cached 2^62", _usage(cached_tokens=2**62), "usage.cached_tokens"),
    Case("cache-write 2^62", _usage(cache_write_tokens=2**62), "usage.cache_write_tokens"),
    Case("reasoning 2^62", _usage(reasoning_tokens=2**62), "usage.reasoning_tokens"),
    Case("negative prompt", _usage(prompt_tokens=-1), "usage.prompt_tokens"),
    Case("negative completion", _usage(completion_tokens=-(2**63)), "usage.completion_tokens"),
    Case(
        "cached over prompt", _usage(cached_tokens=8, cache_write_tokens=3), "usage.cached_tokens"
    ),
    Case("reasoning over completion", _usage(reasoning_tokens=6), "usage.reasoning_tokens"),
    # The finer parts (migration 0006): bounded, and within their totals.
    *(
        Case(f"{name} 2^62", _usage(**{name: 2**62}), f"usage.{name}")
        for name in (
            "cache_write_1h_tokens",
            "audio_prompt_tokens",
            "image_prompt_tokens",
            "video_prompt_tokens",
            "cached_audio_tokens",
            "audio_completion_tokens",
            "web_searches",
            "input_images",
        )
    ),
    Case("negative web searches", _usage(web_searches=-1), "usage.web_searches"),
    Case("10,001 input images", _usage(input_images=10_001), "usage.input_images"),
    Case(
        "1h writes over writes",
        _usage(cache_write_tokens=2, cache_write_1h_tokens=3),
        "usage.cache_write_1h_tokens",
    ),
    Case(
        "modalities over prompt",
        _usage(audio_prompt_tokens=4, image_prompt_tokens=4, video_prompt_tokens=3),
        "usage.audio_prompt_tokens",
    ),
    Case(
        "cached audio over cached",
        _usage(cached_tokens=2, audio_prompt_tokens=5, cached_audio_tokens=3),
        "usage.cached_audio_tokens",
    ),
    Case(
        "cached audio over audio",
        _usage(cached_tokens=5, audio_prompt_tokens=2, cached_audio_tokens=3),
        "usage.cached_audio_tokens",
    ),
    Case(
        "audio output over completion less reasoning",
        _usage(reasoning_tokens=3, audio_completion_tokens=3),
        "usage.audio_completion_tokens",
    ),
    Case("negative price_version", _set(price_version=-1), "price_version"),
    Case("attempt 2^32-1", _set(attempt=2**32 - 1), "attempt"),
    Case("attempt 256", _set(attempt=256), "attempt"),
    Case("latency 2^62", _set(latency_ms=2**62), "latency_ms"),
    Case("negative latency", _set(latency_ms=-1), "latency_ms"),
    Case("ttft 2^62", _set(time_to_first_token_ms=2**62), "time_to_first_token_ms"),
    Case("negative ttft", _set(time_to_first_token_ms=-5), "time_to_first_token_ms"),
    Case("year 1", _dated(lambda: datetime(1, 1, 1, tzinfo=UTC)), "create_time"),
    Case("year 1970", _dated(lambda: datetime(1970, 1, 1, tzinfo=UTC)), "create_time"),
    Case("year 9999", _dated(lambda: datetime(9999, 12, 31, tzinfo=UTC)), "create_time"),
    Case("older than 400 days", _dated(lambda: _now() - timedelta(days=401)), "create_time"),
    Case("next year", _dated(lambda: _now() + timedelta(days=365)), "create_time"),
    Case("10 minutes ahead", _dated(lambda: _now() + timedelta(minutes=10)), "create_time"),
    Case("no create_time", _undated, "create_time"),
    *(Case(f"NUL in {name}", _set(**{name: "a\x00b"}), name) for name in TEXT_FIELDS),
    Case("newline in key_id", _set(key_id="key\nforged"), "key_id"),
    Case("escape in model_id", _set(model_id="m/\x1b[31mred"), "model_id"),
    Case("DEL in provider_id", _set(provider_id="p\x7f"), "provider_id"),
    Case("C1 in endpoint_id", _set(endpoint_id="e\x85"), "endpoint_id"),
    Case("bidi override in upstream_model", _set(upstream_model="gpt\u202e"), "upstream_model"),
    Case("257 characters", _set(generation_id="g" * 257), "generation_id"),
    Case("long finish reason", _set(native_finish_reason="x" * 1000), "native_finish_reason"),
    Case("no generation_id", _set(generation_id=""), "generation_id"),
    Case("no key_id", _set(key_id=""), "key_id"),
    Case("cost $4.6 trillion", _costing("4611686018427.387904"), "cost_usd"),
    Case("cost $1 trillion", _costing("999999999999.999999999999"), "cost_usd"),
    Case("cost 10,000.01", _costing("10000.01"), "cost_usd"),
    Case("cost over $0.10 a token", _costing("1.61"), "cost_usd"),
    Case("negative cost", _costing("-1"), "cost_usd"),
    Case("exponent cost", _costing("1e3"), "cost_usd"),
    Case("NaN cost", _costing("NaN"), "cost_usd"),
    Case("empty cost", _costing(""), "cost_usd"),
    Case("unknown finish reason", _set(finish_reason=99), "finish_reason"),
    Case("unknown status", _set(status=42), "status"),
)
