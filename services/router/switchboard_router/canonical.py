"""The canonical request and the events every provider adapter yields.

Adapters translate a :class:`CompletionRequest` into their provider's wire format and the
provider's stream back into :data:`AdapterEvent` values. The relay never sees wire formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum


class Role(IntEnum):
    SYSTEM = 1
    USER = 2
    ASSISTANT = 3
    TOOL = 4


class Finish(IntEnum):
    """Mirrors ``switchboard.common.v1.FinishReason`` numbers."""

    UNSPECIFIED = 0
    STOP = 1
    LENGTH = 2
    TOOL_CALLS = 3
    CONTENT_FILTER = 4
    ERROR = 5
    CANCELLED = 6


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    name: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class ProviderPrefs:
    order: tuple[str, ...] = ()
    only: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str = ""  # "", "price", "throughput", "latency"
    max_prompt_price: Decimal | None = None  # USD per million tokens
    max_completion_price: Decimal | None = None
    require_parameters: bool = False


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    user: str = ""
    fallback_models: tuple[str, ...] = ()
    provider: ProviderPrefs = field(default_factory=ProviderPrefs)

    def set_parameters(self) -> frozenset[str]:
        """Names of the optional parameters this request sets (for require_parameters)."""
        names = []
        if self.max_tokens is not None:
            names.append("max_tokens")
        if self.temperature is not None:
            names.append("temperature")
        if self.top_p is not None:
            names.append("top_p")
        if self.stop:
            names.append("stop")
        if self.seed is not None:
            names.append("seed")
        return frozenset(names)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class FinishEvent:
    reason: Finish
    native_reason: str = ""


AdapterEvent = TextDelta | UsageReport | FinishEvent
