"""Every seeded price prices fixed usage examples as the provider publishes them.

The expected costs are the providers' published arithmetic written out here (rates from their
pricing pages, as genai-prices 0.2.3 records them; see the seed's notes for the few it lacks),
never recomputed by the cost engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog.config import packaged_seed_path
from switchboard_catalog.seed import load_seed
from switchboard_core.pricing import Counts, PriceSheet
from switchboard_core.upstreams import UpstreamPolicy

M = 1_000_000

# endpoint id: published (input, output, cached input) USD per million tokens.
PUBLISHED: dict[str, tuple[str, str, str]] = {
    "openai:openai/gpt-4o": ("2.5", "10", "1.25"),
    "openai:openai/gpt-4o-mini": ("0.15", "0.6", "0.075"),
    "openai:openai/gpt-4.1": ("2", "8", "0.5"),
    "openai:openai/gpt-4.1-mini": ("0.4", "1.6", "0.1"),
    "openai:openai/gpt-4.1-nano": ("0.1", "0.4", "0.025"),
    "openai:openai/o3-mini": ("1.1", "4.4", "0.55"),
    "openai:openai/o4-mini": ("1.1", "4.4", "0.275"),
    "anthropic:anthropic/claude-opus-4.5": ("5", "25", "0.5"),
    "anthropic:anthropic/claude-opus-4.1": ("15", "75", "1.5"),
    "anthropic:anthropic/claude-sonnet-4.5": ("3", "15", "0.3"),
    "anthropic:anthropic/claude-sonnet-4": ("3", "15", "0.3"),
    "anthropic:anthropic/claude-haiku-4.5": ("1", "5", "0.1"),
    "anthropic:anthropic/claude-3.5-haiku": ("0.8", "4", "0.08"),
    "google:google/gemini-2.5-pro": ("1.25", "10", "0.125"),
    "google:google/gemini-2.5-flash": ("0.3", "2.5", "0.03"),
    "google:google/gemini-2.5-flash-lite": ("0.1", "0.4", "0.01"),
    "google:google/gemini-2.0-flash": ("0.1", "0.4", "0.025"),
    "together:meta-llama/llama-3.3-70b-instruct": ("0.88", "0.88", ""),
    "groq:meta-llama/llama-3.3-70b-instruct": ("0.59", "0.79", ""),
    "fireworks:meta-llama/llama-3.3-70b-instruct": ("0.9", "0.9", ""),
    "deepinfra:meta-llama/llama-3.3-70b-instruct": ("0.23", "0.4", ""),
    "together:meta-llama/llama-3.1-8b-instruct": ("0.18", "0.18", ""),
    "groq:meta-llama/llama-3.1-8b-instruct": ("0.05", "0.08", ""),
    "fireworks:meta-llama/llama-3.1-8b-instruct": ("0.2", "0.2", ""),
    "deepinfra:meta-llama/llama-3.1-8b-instruct": ("0.03", "0.05", ""),
    "mistral:mistralai/mistral-large": ("2", "6", ""),
    "mistral:mistralai/mistral-small-24b-instruct-2501": ("0.1", "0.3", ""),
    "together:mistralai/mistral-small-24b-instruct-2501": ("0.8", "0.8", ""),
    "deepinfra:mistralai/mistral-small-24b-instruct-2501": ("0.05", "0.08", ""),
    "mistral:mistralai/mistral-nemo": ("0.15", "0.15", ""),
    "deepseek:deepseek/deepseek-chat-v3": ("0.27", "1.1", "0.07"),
    "together:deepseek/deepseek-chat-v3": ("1.25", "1.25", ""),
    "fireworks:deepseek/deepseek-chat-v3": ("0.9", "0.9", ""),
    "deepseek:deepseek/deepseek-r1": ("0.55", "2.19", "0.14"),
    "together:deepseek/deepseek-r1": ("3", "7", ""),
    "fireworks:deepseek/deepseek-r1": ("3", "8", ""),
    "switchboard:switchboard/demo": ("1", "2", ""),
    "openai:openai/gpt-6-luna": ("0.1", "0.5", "0.01"),
    "openai:openai/gpt-5.6-luna": ("0.2", "1.2", "0.02"),
    "openai:openai/gpt-5.6-sol": ("4", "20", "0.4"),
    "openai:openai/gpt-5.6-terra": ("2", "12", "0.2"),
    "anthropic:anthropic/claude-opus-4.8": ("5", "25", "0.5"),
    "anthropic:anthropic/claude-opus-5.5": ("4", "20", "0.2"),
    "anthropic:anthropic/claude-sonnet-4.6": ("3", "15", "0.3"),
    "google:google/gemini-3.5-flash": ("1.5", "9", "0.15"),
    "google:google/gemini-4-argon": ("2", "10", "0.1"),
    "mistral:mistralai/mistral-large-3": ("0.5", "1.5", "0.05"),
    "mistral:mistralai/mistral-small-4": ("0.15", "0.6", "0.015"),
    "deepseek:deepseek/deepseek-v4-flash": ("0.15", "0.6", "0.003"),
}


def _sheets() -> dict[str, PriceSheet]:
    seed = load_seed(packaged_seed_path(), policy=UpstreamPolicy(["127.0.0.1"]))
    return {e.id: PriceSheet.from_proto(e.pricing) for e in seed.entries.endpoints}


def _endpoints() -> dict[str, catalog_pb2.Endpoint]:
    seed = load_seed(packaged_seed_path(), policy=UpstreamPolicy(["127.0.0.1"]))
    return {e.id: e for e in seed.entries.endpoints}


SHEETS = _sheets()


def test_every_seeded_endpoint_has_published_rates_here() -> None:
    assert set(PUBLISHED) == set(SHEETS)


@pytest.mark.parametrize("endpoint_id", sorted(PUBLISHED))
def test_a_million_in_and_a_million_out(endpoint_id: str) -> None:
    prompt, completion, cached = PUBLISHED[endpoint_id]
    sheet = SHEETS[endpoint_id]
    # Off-peak hours for DeepSeek's windows are tested below; 12:00 UTC is peak for
    # deepseek-chat/reasoner (list price) and off-peak for deepseek-v4-flash (base price).
    noon = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    if sheet.tiers:  # a million prompt tokens would reach the long-prompt tier: 100k here
        assert sheet.cost(Counts(M // 10, M), noon) == Decimal(prompt) / 10 + Decimal(completion)
        return
    assert sheet.cost(Counts(M, M), noon) == Decimal(prompt) + Decimal(completion)
    if cached:
        # half the prompt read from the cache
        expected = Decimal(prompt) / 2 + Decimal(cached) / 2 + Decimal(completion)
        assert sheet.cost(Counts(M, M, cached_tokens=M // 2), noon) == expected


def test_gemini_25_pro_prices_the_whole_request_at_the_long_prompt_tier() -> None:
    sheet = SHEETS["google:google/gemini-2.5-pro"]
    # <= 200k prompt tokens: 1.25 in, 10 out
    assert sheet.cost(Counts(200_000, 100_000)) == Decimal("0.25") + Decimal("1.0")
    # > 200k: every token at 2.50 in, 15 out; cached 0.25
    assert sheet.cost(Counts(300_000, 100_000)) == Decimal("0.75") + Decimal("1.5")
    assert sheet.cost(Counts(300_000, 0, cached_tokens=100_000)) == Decimal("0.5") + Decimal(
        "0.025"
    )


def test_gemini_audio_input_has_its_own_rate() -> None:
    flash = SHEETS["google:google/gemini-2.5-flash"]
    # 1M audio in at 1.00, 1M text in at 0.30, 1M out at 2.50
    assert flash.cost(Counts(2 * M, M, audio_prompt_tokens=M)) == Decimal("1.00") + Decimal(
        "0.30"
    ) + Decimal("2.50")
    # cached audio 0.10
    assert flash.cost(
        Counts(M, 0, cached_tokens=M, audio_prompt_tokens=M, cached_audio_tokens=M)
    ) == Decimal("0.10")
    lite = SHEETS["google:google/gemini-2.5-flash-lite"]
    assert lite.cost(Counts(M, 0, audio_prompt_tokens=M)) == Decimal("0.30")
    old = SHEETS["google:google/gemini-2.0-flash"]
    assert old.cost(Counts(M, 0, audio_prompt_tokens=M)) == Decimal("0.70")


@pytest.mark.parametrize(
    ("endpoint_id", "base", "read"),
    [
        # (input, cache read): reads are 0.1x input, except Opus 5.5's 0.05x
        ("anthropic:anthropic/claude-opus-4.5", "5", "0.5"),
        ("anthropic:anthropic/claude-opus-4.1", "15", "1.5"),
        ("anthropic:anthropic/claude-opus-4.8", "5", "0.5"),
        ("anthropic:anthropic/claude-opus-5.5", "4", "0.2"),
        ("anthropic:anthropic/claude-sonnet-4.5", "3", "0.3"),
        ("anthropic:anthropic/claude-sonnet-4.6", "3", "0.3"),
        ("anthropic:anthropic/claude-sonnet-4", "3", "0.3"),
        ("anthropic:anthropic/claude-haiku-4.5", "1", "0.1"),
        ("anthropic:anthropic/claude-3.5-haiku", "0.8", "0.08"),
    ],
)
def test_anthropic_cache_writes_cost_125_and_2_times_input(
    endpoint_id: str, base: str, read: str
) -> None:
    sheet = SHEETS[endpoint_id]
    five_minutes = Counts(M, 0, cache_write_tokens=M)
    one_hour = Counts(M, 0, cache_write_tokens=M, cache_write_1h_tokens=M)
    assert sheet.cost(five_minutes) == Decimal(base) * Decimal("1.25")
    assert sheet.cost(one_hour) == Decimal(base) * 2
    assert sheet.cost(Counts(M, 0, cached_tokens=M)) == Decimal(read)
    # web search: 10 USD per 1,000 searches
    assert sheet.cost(Counts(0, 0, web_searches=3)) == Decimal("0.03")


@pytest.mark.parametrize(
    ("endpoint_id", "rates", "long"),
    [
        # (in, out, cached, 5m write) up to 272k prompt tokens, then 2x in/cache, 1.5x out
        ("openai:openai/gpt-6-luna", ("0.1", "0.5", "0.01", "0.125"), ("0.2", "0.75")),
        ("openai:openai/gpt-5.6-luna", ("0.2", "1.2", "0.02", "0.25"), ("0.4", "1.8")),
        ("openai:openai/gpt-5.6-sol", ("4", "20", "0.4", "5"), ("8", "30")),
        ("openai:openai/gpt-5.6-terra", ("2", "12", "0.2", "2.5"), ("4", "18")),
    ],
)
def test_openai_long_prompts_and_cache_writes(
    endpoint_id: str, rates: tuple[str, str, str, str], long: tuple[str, str]
) -> None:
    sheet = SHEETS[endpoint_id]
    prompt, completion, cached, write = (Decimal(r) for r in rates)
    tenth = 100_000
    assert sheet.cost(Counts(tenth, 0, cache_write_tokens=tenth)) == write / 10
    assert sheet.cost(Counts(tenth, 0, cached_tokens=tenth)) == cached / 10
    # past 272k prompt tokens cache reads and writes double too
    assert sheet.cost(Counts(M, 0, cached_tokens=M)) == cached * 2
    assert sheet.cost(Counts(M, 0, cache_write_tokens=M)) == write * 2
    short = Counts(272_000, 10_000)
    assert sheet.cost(short) == prompt * Decimal("0.272") + completion * Decimal("0.01")
    over = Counts(272_001, 10_000)
    assert sheet.cost(over) == Decimal(long[0]) * Decimal("0.272001") + Decimal(long[1]) * Decimal(
        "0.01"
    )


def test_openai_cached_reads_double_past_the_tier() -> None:
    sheet = SHEETS["openai:openai/gpt-6-luna"]
    assert sheet.cost(Counts(M, 0, cached_tokens=M)) == Decimal("0.02")
    assert sheet.cost(Counts(200_000, 0, cached_tokens=200_000)) == Decimal("0.01") * Decimal("0.2")


@pytest.mark.parametrize(
    "endpoint_id", ["deepseek:deepseek/deepseek-chat-v3", "deepseek:deepseek/deepseek-r1"]
)
def test_deepseek_off_peak_hours(endpoint_id: str) -> None:
    sheet = SHEETS[endpoint_id]
    usage = Counts(M, M, cached_tokens=M // 2)
    # 16:30-00:30 UTC: 0.135 in, 0.035 cached, 0.55 out
    off_peak = Decimal("0.135") / 2 + Decimal("0.035") / 2 + Decimal("0.55")
    for hour, minute in ((16, 30), (23, 59), (0, 29)):
        at = datetime(2026, 11, 20, hour, minute, tzinfo=UTC)
        assert sheet.cost(usage, at) == off_peak, (hour, minute)
    prompt, completion, cached = (Decimal(r) for r in PUBLISHED[endpoint_id])
    at = datetime(2026, 11, 20, 0, 30, tzinfo=UTC)
    assert sheet.cost(usage, at) == prompt / 2 + cached / 2 + completion


def test_deepseek_v4_flash_peak_windows() -> None:
    sheet = SHEETS["deepseek:deepseek/deepseek-v4-flash"]
    usage = Counts(M, M, cached_tokens=M // 2)
    peak = Decimal("0.3") / 2 + Decimal("0.006") / 2 + Decimal("1.2")
    off_peak = Decimal("0.15") / 2 + Decimal("0.003") / 2 + Decimal("0.6")
    for hour, expected in (
        (0, off_peak),
        (1, peak),
        (3, peak),
        (4, off_peak),
        (6, peak),
        (9, peak),
        (10, off_peak),
        (20, off_peak),
    ):
        at = datetime(2026, 11, 20, hour, 0, tzinfo=UTC)
        assert sheet.cost(usage, at) == expected, hour


def test_gemini_models_that_retire_say_so() -> None:
    endpoints = _endpoints()
    for endpoint_id in ("google:google/gemini-2.5-pro", "google:google/gemini-2.5-flash"):
        assert endpoints[endpoint_id].retirement_time.ToJsonString() == "2026-12-01T00:00:00Z"


def test_gemini_4_argon_is_seeded_with_its_announced_price_from_2026_12_01() -> None:
    (change,) = _endpoints()["google:google/gemini-4-argon"].scheduled_prices
    assert change.effective_time.ToDatetime(UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    sheet = PriceSheet.from_proto(change.pricing)
    # Google: 4 in, 20 out, 0.2 cached, USD per million tokens.
    assert sheet.cost(Counts(M, M, cached_tokens=M // 2)) == Decimal("2") + Decimal(
        "0.1"
    ) + Decimal("20")
    assert [e.id for e in _endpoints().values() if e.scheduled_prices] == [
        "google:google/gemini-4-argon"
    ]
