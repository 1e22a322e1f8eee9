"""Price sheets as providers publish them, and the exact cost of a generation under one.

A :class:`PriceSheet` is an endpoint's price (``switchboard.common.v1.Pricing``): base
:class:`Rates`, optional :class:`Tier` s by prompt length and :class:`Window` s by time of day.
A generation is priced with the window its ``create_time`` falls in, then the highest tier its
prompt passes; each overrides the rates it sets (a tier prices the WHOLE request, as Gemini's
and Anthropic's long-context prices do, and as ``genai-prices`` models them). Every rate that
is not set falls back to a more general one (:meth:`Rates.resolved`).

Token rates are USD per million tokens; ``request``, ``image`` and ``web_search`` are USD each.
Money is :class:`~decimal.Decimal` throughout, never float. The cost is exact: the sum of
count x rate / 1,000,000 plus the fees, to as many digits as that takes (the ledger keeps 12
after the point; metering refuses costs that need more).

:class:`Counts` are canonical usage counts: ``prompt_tokens`` includes cached, cache-write,
audio, image and video tokens; ``completion_tokens`` includes reasoning and audio output. Parts
that do not fit their totals are clamped the way a provider's totals make sense of them (cached
first, then cache writes; of what is left, audio, image, video, then text), so the cost of a
report never exceeds what its totals allow and a bad split cannot make it negative.

The cost is monotone: more of any part (with its totals grown by as much) never costs less,
provided each tier's rates are at least the rates below it, which the catalog checks
(:func:`tier_problems`).
"""

from __future__ import annotations

import dataclasses
import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

from switchboard.common.v1 import common_pb2
from switchboard_core.money import MILLION, ZERO, format_usd, parse_usd

# Rates, by the Pricing field that holds them (USD per million tokens unless noted).
TOKEN_RATES: dict[str, str] = {
    "prompt": "prompt_usd_per_mtok",
    "completion": "completion_usd_per_mtok",
    "cached_prompt": "cached_prompt_usd_per_mtok",
    "cache_write": "cache_write_usd_per_mtok",
    "cache_write_1h": "cache_write_1h_usd_per_mtok",
    "audio_prompt": "audio_prompt_usd_per_mtok",
    "image_prompt": "image_prompt_usd_per_mtok",
    "video_prompt": "video_prompt_usd_per_mtok",
    "cached_audio": "cached_audio_usd_per_mtok",
    "audio_completion": "audio_completion_usd_per_mtok",
    "reasoning": "reasoning_usd_per_mtok",
}
FEES: dict[str, str] = {
    "request": "request_usd",
    "image": "image_usd",
    "web_search": "web_search_usd",
}
ALL_RATES = {**TOKEN_RATES, **FEES}
HH_MM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True, slots=True)
class Rates:
    """Some or all of a price's rates; ``None`` means "not set here"."""

    prompt: Decimal | None = None
    completion: Decimal | None = None
    cached_prompt: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    audio_prompt: Decimal | None = None
    image_prompt: Decimal | None = None
    video_prompt: Decimal | None = None
    cached_audio: Decimal | None = None
    audio_completion: Decimal | None = None
    reasoning: Decimal | None = None
    request: Decimal | None = None
    image: Decimal | None = None
    web_search: Decimal | None = None

    def over(self, below: Rates) -> Rates:
        """These rates where set, ``below``'s elsewhere."""
        return Rates(
            **{
                name: mine if (mine := getattr(self, name)) is not None else getattr(below, name)
                for name in ALL_RATES
            }
        )

    def set_rates(self) -> dict[str, Decimal]:
        return {name: value for name in ALL_RATES if (value := getattr(self, name)) is not None}

    def resolved(self) -> Resolved:
        """Every rate, the unset ones falling back as ``Pricing`` documents: cache reads,
        cache writes and input by modality to the prompt rate, hour-long writes to the
        five-minute rate, cached audio to cached prompt, audio output and reasoning to the
        completion rate, fees to zero."""
        prompt = self.prompt if self.prompt is not None else ZERO
        completion = self.completion if self.completion is not None else ZERO
        cached = _or(self.cached_prompt, prompt)
        write = _or(self.cache_write, prompt)
        return Resolved(
            prompt=prompt,
            completion=completion,
            cached_prompt=cached,
            cache_write=write,
            cache_write_1h=_or(self.cache_write_1h, write),
            audio_prompt=_or(self.audio_prompt, prompt),
            image_prompt=_or(self.image_prompt, prompt),
            video_prompt=_or(self.video_prompt, prompt),
            cached_audio=_or(self.cached_audio, cached),
            audio_completion=_or(self.audio_completion, completion),
            reasoning=_or(self.reasoning, completion),
            request=_or(self.request, ZERO),
            image=_or(self.image, ZERO),
            web_search=_or(self.web_search, ZERO),
        )


def _or(value: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if value is None else value


@dataclass(frozen=True, slots=True)
class Resolved:
    """Every rate of one request's price, fallbacks applied."""

    prompt: Decimal
    completion: Decimal
    cached_prompt: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    audio_prompt: Decimal
    image_prompt: Decimal
    video_prompt: Decimal
    cached_audio: Decimal
    audio_completion: Decimal
    reasoning: Decimal
    request: Decimal
    image: Decimal
    web_search: Decimal


@dataclass(frozen=True, slots=True)
class Tier:
    """Rates for requests whose prompt has more than ``prompt_tokens_above`` tokens."""

    prompt_tokens_above: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class Window:
    """Rates from ``start`` (inclusive) to ``end`` (exclusive) each day, UTC, in minutes
    since midnight; ``end < start`` runs past midnight."""

    start: int
    end: int
    rates: Rates

    def contains(self, minute: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True, slots=True)
class Counts:
    """What a generation used, in canonical terms (see the module docstring)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_prompt_tokens: int = 0
    image_prompt_tokens: int = 0
    video_prompt_tokens: int = 0
    cached_audio_tokens: int = 0
    audio_completion_tokens: int = 0
    reasoning_tokens: int = 0
    web_searches: int = 0
    input_images: int = 0
    requests: int = 1

    @classmethod
    def of(cls, usage: common_pb2.Usage) -> Counts:
        return cls.reported(usage, usage.input_images)

    @classmethod
    def reported(cls, usage: object, input_images: int = 0) -> Counts:
        """The counts of anything that names them as ``common.v1.Usage`` does (the proto, the
        router's ``UsageReport``), with the request's ``input_images``."""
        # USAGE_COUNTS are Counts' leading fields, in order (mypy cannot see that the tuple
        # stops before input_images; test_core_pricing checks the order).
        return cls(*_read_counts(usage), input_images=input_images)  # type: ignore[misc]


# The Counts a usage report carries under the same names (all but the request's own:
# input_images and requests).
USAGE_COUNTS: tuple[str, ...] = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "audio_prompt_tokens",
    "image_prompt_tokens",
    "video_prompt_tokens",
    "cached_audio_tokens",
    "audio_completion_tokens",
    "reasoning_tokens",
    "web_searches",
)
# The USAGE_COUNTS of a report, in Counts' field order (they lead it), read in one call: a
# generation's cost is counted at its end and when it is registered in flight, and the
# keyword dict this replaced took a third of Counts.reported (measured).
_read_counts = operator.attrgetter(*USAGE_COUNTS)


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """An endpoint's price: base rates, tiers by prompt length, windows by time of day."""

    base: Rates
    tiers: tuple[Tier, ...] = ()  # lowest threshold first
    windows: tuple[Window, ...] = ()
    # ``base`` resolved once, when the sheet is made: what every request pays outside a time
    # window and below the first tier (most requests, on most sheets).
    _base: Resolved = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_base", self.base.resolved())

    @classmethod
    def flat(
        cls, prompt: str, completion: str, cached_prompt: str = "", cache_write: str = ""
    ) -> PriceSheet:
        """A sheet of the four classic rates (empty strings: the prompt price)."""
        return cls(
            Rates(
                prompt=parse_usd(prompt),
                completion=parse_usd(completion),
                cached_prompt=parse_usd(cached_prompt) if cached_prompt else None,
                cache_write=parse_usd(cache_write) if cache_write else None,
            )
        )

    def rates(self, prompt_tokens: int, at: datetime | None = None) -> Resolved:
        """The rates a request with ``prompt_tokens`` made at ``at`` pays (no window when
        ``at`` is None)."""
        rates = self.base
        if at is not None and self.windows:
            minute = _utc_minute(at)
            for window in self.windows:
                if window.contains(minute):
                    rates = window.rates.over(rates)
                    break
        for tier in reversed(self.tiers):
            if prompt_tokens > tier.prompt_tokens_above:
                rates = tier.rates.over(rates)
                break
        return self._base if rates is self.base else rates.resolved()

    def cost(self, counts: Counts, at: datetime | None = None) -> Decimal:
        """The exact cost in USD of ``counts`` under this sheet at ``at``."""
        r = self.rates(max(counts.prompt_tokens, 0), at)
        c = _clamped(counts)
        micro = (
            c.prompt_text * r.prompt
            + c.audio * r.audio_prompt
            + c.image * r.image_prompt
            + c.video * r.video_prompt
            + c.cached_text * r.cached_prompt
            + c.cached_audio * r.cached_audio
            + c.write_5m * r.cache_write
            + c.write_1h * r.cache_write_1h
            + c.completion_text * r.completion
            + c.reasoning * r.reasoning
            + c.audio_out * r.audio_completion
        )
        fees = (
            max(counts.requests, 0) * r.request
            + max(counts.input_images, 0) * r.image
            + max(counts.web_searches, 0) * r.web_search
        )
        return micro / MILLION + fees

    # --- proto ---------------------------------------------------------------------------

    @classmethod
    def from_proto(cls, pricing: common_pb2.Pricing) -> PriceSheet:
        """The sheet ``pricing`` describes; raises :class:`ValueError` (naming the field)
        for a malformed one (the catalog validates prices before storing them)."""
        return cls(
            _rates(pricing, ""),
            tuple(
                Tier(t.prompt_tokens_above, _rates(t.pricing, f"tiers[{i}].pricing."))
                for i, t in enumerate(pricing.tiers)
            ),
            tuple(
                Window(
                    _minute(w.start_utc, f"windows[{i}].start_utc"),
                    _minute(w.end_utc, f"windows[{i}].end_utc"),
                    _rates(w.pricing, f"windows[{i}].pricing."),
                )
                for i, w in enumerate(pricing.windows)
            ),
        )

    def to_proto(self) -> common_pb2.Pricing:
        pricing = _rates_proto(self.base)
        for tier in self.tiers:
            pricing.tiers.add(
                prompt_tokens_above=tier.prompt_tokens_above, pricing=_rates_proto(tier.rates)
            )
        for window in self.windows:
            pricing.windows.add(
                start_utc=_hh_mm(window.start),
                end_utc=_hh_mm(window.end),
                pricing=_rates_proto(window.rates),
            )
        return pricing


class _Parts(NamedTuple):
    """A usage's counts split into what each rate prices (a tuple: made once per cost)."""

    prompt_text: int = 0
    audio: int = 0
    image: int = 0
    video: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    write_5m: int = 0
    write_1h: int = 0
    completion_text: int = 0
    reasoning: int = 0
    audio_out: int = 0


def _clamped(c: Counts) -> _Parts:
    if not (
        c.cached_tokens
        or c.cache_write_tokens
        or c.cache_write_1h_tokens
        or c.cached_audio_tokens
        or c.audio_prompt_tokens
        or c.image_prompt_tokens
        or c.video_prompt_tokens
        or c.reasoning_tokens
        or c.audio_completion_tokens
    ):
        # Most reports split nothing out: all of it is text, as the rules below would say
        # (this check takes ~0.1 µs, the rules ~3 µs, measured).
        return _Parts(
            prompt_text=max(c.prompt_tokens, 0), completion_text=max(c.completion_tokens, 0)
        )
    prompt = max(c.prompt_tokens, 0)
    cached = min(max(c.cached_tokens, 0), prompt)
    written = min(max(c.cache_write_tokens, 0), prompt - cached)
    written_1h = min(max(c.cache_write_1h_tokens, 0), written)
    fresh = prompt - cached - written
    cached_audio = min(max(c.cached_audio_tokens, 0), cached)
    audio = min(max(c.audio_prompt_tokens - cached_audio, 0), fresh)
    image = min(max(c.image_prompt_tokens, 0), fresh - audio)
    video = min(max(c.video_prompt_tokens, 0), fresh - audio - image)
    completion = max(c.completion_tokens, 0)
    reasoning = min(max(c.reasoning_tokens, 0), completion)
    audio_out = min(max(c.audio_completion_tokens, 0), completion - reasoning)
    return _Parts(
        prompt_text=fresh - audio - image - video,
        audio=audio,
        image=image,
        video=video,
        cached_text=cached - cached_audio,
        cached_audio=cached_audio,
        write_5m=written - written_1h,
        write_1h=written_1h,
        completion_text=completion - reasoning - audio_out,
        reasoning=reasoning,
        audio_out=audio_out,
    )


def _utc_minute(at: datetime) -> int:
    """Minutes since midnight UTC (a naive time is UTC)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.hour * 60 + at.minute


def _rates(pricing: common_pb2.Pricing, prefix: str) -> Rates:
    values: dict[str, Decimal | None] = {}
    for name, field in ALL_RATES.items():
        text = getattr(pricing, field)
        try:
            values[name] = parse_usd(text) if text else None
        except ValueError as error:
            raise ValueError(f"{prefix}{field}: {error}") from None
    return Rates(**values)


def _rates_proto(rates: Rates) -> common_pb2.Pricing:
    pricing = common_pb2.Pricing()
    for name, value in rates.set_rates().items():
        setattr(pricing, ALL_RATES[name], format_usd(value))
    return pricing


def _minute(text: str, field: str) -> int:
    match = HH_MM.fullmatch(text)
    if match is None:
        raise ValueError(f"{field}: expected a UTC time of day 'HH:MM', got {text!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


def _hh_mm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def tier_problems(sheet: PriceSheet) -> list[tuple[str, str]]:
    """Why ``sheet``'s tiers or windows are not well formed (``(field, message)`` pairs):
    thresholds must rise, a tier must set some rate and never lower one below the rate it
    overrides (the cost stays monotone in prompt length), windows must not overlap."""
    problems: list[tuple[str, str]] = []
    below = sheet.base.resolved()
    last = -1
    for i, tier in enumerate(sheet.tiers):
        where = f"tiers[{i}]"
        if tier.prompt_tokens_above <= last:
            problems.append((f"{where}.prompt_tokens_above", "thresholds must rise"))
        last = tier.prompt_tokens_above
        if not tier.rates.set_rates():
            problems.append((f"{where}.pricing", "a tier must set at least one rate"))
        here = tier.rates.over(_rates_of(below)).resolved()
        for name in ALL_RATES:
            if getattr(here, name) < getattr(below, name):
                problems.append(
                    (f"{where}.pricing.{ALL_RATES[name]}", "lower than the tier below it")
                )
        below = here
    covered: list[tuple[int, int]] = []
    for i, window in enumerate(sheet.windows):
        if window.start == window.end:
            problems.append((f"windows[{i}]", "start and end must differ"))
        spans = (
            [(window.start, window.end)]
            if window.start < window.end
            else [(window.start, 1440), (0, window.end)]
        )
        if any(a < d and c < b for a, b in spans for c, d in covered):
            problems.append((f"windows[{i}]", "overlaps an earlier window"))
        covered.extend(spans)
    return problems


def _rates_of(resolved: Resolved) -> Rates:
    return Rates(**{name: getattr(resolved, name) for name in ALL_RATES})


__all__ = [
    "ALL_RATES",
    "Counts",
    "PriceSheet",
    "Rates",
    "Resolved",
    "Tier",
    "Window",
    "tier_problems",
]
