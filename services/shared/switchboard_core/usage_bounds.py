"""The most one generation can plausibly use: bounds shared by the router and metering.

The router distrusts a provider's usage report outside these bounds (and replaces it with its
own estimate); metering refuses a usage event outside them. Both read them from here, so a
report the router lets through is one the ledger accepts.

Each bound sits far above anything real, so an honest generation never meets one, and far
below what breaks the ledger's arithmetic, so no forged or garbled event can:

- **Tokens.** The largest context windows served are about 2M tokens (Gemini); the largest
  advertised is 10M (Llama 4 Scout). ``MAX_PROMPT_TOKENS`` is 20M, twice that. The largest
  output caps are about 128K tokens (hidden reasoning included); ``MAX_COMPLETION_TOKENS`` is
  4M, some 30 times that. Cached and cache-write tokens are parts of the prompt, reasoning
  tokens a part of the completion, so they have the same bounds and must add up; so must the
  finer parts (one-hour cache writes of the cache writes, audio, image and video input of the
  prompt, cached audio of the cached tokens and of the audio input, audio output of the
  completion beside its reasoning).
- **Fees.** ``web_searches`` and ``input_images`` are billed per unit. The most searches a
  tool loop runs for one request is a few dozen (Anthropic caps ``max_uses`` per request; an
  agent may ask more), and providers cap images per request at a few hundred (Anthropic 100,
  Gemini 3,600 for video frames): ``MAX_WEB_SEARCHES`` and ``MAX_INPUT_IMAGES`` are 10,000
  each. Summed in a ``bigint`` rollup they overflow even later than the tokens do.
- **Rollups.** ``usage_rollups`` sums tokens per key, model, provider and hour in ``bigint``
  (at most 9.22e18). At 20M tokens an event it takes 4.6e11 events in one such hour to
  overflow: 128 million a second, for one key, for an hour. The per-event bound is the
  guarantee; nothing else in the ledger needs to watch for it.
- **Money.** No generation today costs more than about $100 (200K prompt tokens at $150 per
  million and 100K completion tokens at $600 per million: o1-pro). ``MAX_COST_USD`` is
  $10,000 a generation. A cost must also be at most its tokens times ``MAX_USD_PER_TOKEN``
  ($0.10 a token, $100,000 per million: 166 times the dearest price listed today), so an
  event cannot claim dollars for a handful of tokens; the exact price check against the
  catalog is separate (``switchboard_metering.event_rules.CostCheck``).
- **Attempts.** The router tries the model and at most five fallback models, each on its
  providers: ``attempt`` is below ``MAX_ATTEMPTS`` (256), which fits Postgres ``integer``
  with room to spare (2**32 - 1 did not).
- **Durations.** A request lasts at most the router's deadline (10 minutes by default);
  ``latency_ms`` and ``time_to_first_token_ms`` are at most a day.
- **Text.** Ids, model names and the provider's own finish reason are at most
  ``MAX_TEXT_CHARS`` (256) characters, and hold no control characters (a NUL cannot be
  stored in Postgres ``text``; the others break log lines and make look-alike ids).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

MAX_PROMPT_TOKENS = 20_000_000
MAX_COMPLETION_TOKENS = 4_000_000
MAX_WEB_SEARCHES = 10_000
MAX_INPUT_IMAGES = 10_000
MAX_ATTEMPTS = 256
MAX_DURATION_MS = 24 * 3600 * 1000
MAX_COST_USD = Decimal(10_000)
MAX_USD_PER_TOKEN = Decimal("0.1")
MAX_TEXT_CHARS = 256
# How old a usage event may be, by default (SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS): metering
# refuses older ones, and the catalog sends metering the price history that far back. Both
# read the one variable.
DEFAULT_MAX_EVENT_AGE_DAYS = 400

# C0 and C1 controls (NUL among them), DEL, zero-width and bidirectional marks, line and
# paragraph separators, and the byte-order mark.
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

# Bounded reasons, usable as metric labels.
NEGATIVE = "negative"
OVER_BOUND = "over_bound"
INCONSISTENT_PARTS = "inconsistent_parts"


@dataclass(frozen=True, slots=True)
class UsageProblem:
    """One thing wrong with a usage report: the field (a ``Usage`` field name), a bounded
    ``reason`` (one of the constants above) and a message naming the bound."""

    field: str
    reason: str
    message: str


_LIMITS = {
    "prompt_tokens": MAX_PROMPT_TOKENS,
    "completion_tokens": MAX_COMPLETION_TOKENS,
    "cached_tokens": MAX_PROMPT_TOKENS,
    "reasoning_tokens": MAX_COMPLETION_TOKENS,
    "cache_write_tokens": MAX_PROMPT_TOKENS,
    "cache_write_1h_tokens": MAX_PROMPT_TOKENS,
    "audio_prompt_tokens": MAX_PROMPT_TOKENS,
    "image_prompt_tokens": MAX_PROMPT_TOKENS,
    "video_prompt_tokens": MAX_PROMPT_TOKENS,
    "cached_audio_tokens": MAX_PROMPT_TOKENS,
    "audio_completion_tokens": MAX_COMPLETION_TOKENS,
    "web_searches": MAX_WEB_SEARCHES,
    "input_images": MAX_INPUT_IMAGES,
}
# The counts of a usage report, by their ``switchboard.common.v1.Usage`` names.
USAGE_COUNTS = tuple(_LIMITS)


def usage_problems(
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_write_tokens: int = 0,
    *,
    cache_write_1h_tokens: int = 0,
    audio_prompt_tokens: int = 0,
    image_prompt_tokens: int = 0,
    video_prompt_tokens: int = 0,
    cached_audio_tokens: int = 0,
    audio_completion_tokens: int = 0,
    web_searches: int = 0,
    input_images: int = 0,
) -> list[UsageProblem]:
    """What is wrong with these counts (canonical terms: the prompt includes cached,
    cache-write, audio, image and video tokens; the completion includes reasoning and audio
    output tokens); empty when plausible. Each part is named by the field at fault."""
    counts = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        "reasoning_tokens": reasoning_tokens,
        "cache_write_tokens": cache_write_tokens,
        "cache_write_1h_tokens": cache_write_1h_tokens,
        "audio_prompt_tokens": audio_prompt_tokens,
        "image_prompt_tokens": image_prompt_tokens,
        "video_prompt_tokens": video_prompt_tokens,
        "cached_audio_tokens": cached_audio_tokens,
        "audio_completion_tokens": audio_completion_tokens,
        "web_searches": web_searches,
        "input_images": input_images,
    }
    problems: list[UsageProblem] = []
    for name, value in counts.items():
        if value < 0:
            problems.append(UsageProblem(name, NEGATIVE, "must not be negative"))
        elif value > _LIMITS[name]:
            problems.append(UsageProblem(name, OVER_BOUND, f"must be at most {_LIMITS[name]}"))
    if problems:
        return problems  # the sums below would only repeat them
    for name, rule, holds in (
        (
            "cached_tokens",
            "cached_tokens + cache_write_tokens must not exceed prompt_tokens",
            cached_tokens + cache_write_tokens <= prompt_tokens,
        ),
        (
            "reasoning_tokens",
            "must not exceed completion_tokens (which include them)",
            reasoning_tokens <= completion_tokens,
        ),
        (
            "cache_write_1h_tokens",
            "must not exceed cache_write_tokens (which include them)",
            cache_write_1h_tokens <= cache_write_tokens,
        ),
        (
            "audio_prompt_tokens",
            "audio + image + video prompt tokens must not exceed prompt_tokens",
            audio_prompt_tokens + image_prompt_tokens + video_prompt_tokens <= prompt_tokens,
        ),
        (
            "cached_audio_tokens",
            "must not exceed cached_tokens nor audio_prompt_tokens (which include them)",
            cached_audio_tokens <= min(cached_tokens, audio_prompt_tokens),
        ),
        (
            "audio_completion_tokens",
            "audio_completion_tokens + reasoning_tokens must not exceed completion_tokens",
            # (reasoning over the completion is named above, once)
            reasoning_tokens > completion_tokens
            or audio_completion_tokens + reasoning_tokens <= completion_tokens,
        ),
    ):
        if not holds:
            problems.append(UsageProblem(name, INCONSISTENT_PARTS, rule))
    return problems


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be an id or name in the ledger, or None."""
    if len(value) > MAX_TEXT_CHARS:
        return f"at most {MAX_TEXT_CHARS} characters"
    if CONTROL_CHARS.search(value):
        return "must not contain control characters"
    return None
