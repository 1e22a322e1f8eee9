"""Price sheets price usage as the providers' own published arithmetic does: tiers by prompt
length, input by modality, cache writes by duration, time-of-day windows, fees; exact
decimals; and never less for more."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard.common.v1 import common_pb2
from switchboard_core.pricing import Counts, PriceSheet, Rates, Tier, Window, tier_problems

D = Decimal


def usd(text: str) -> Decimal:
    return Decimal(text)


# Gemini 2.5 Pro (ai.google.dev/gemini-api/docs/pricing): prompts up to 200k tokens $1.25 in,
# $10 out (thinking included); longer prompts $2.50 in and $15 out for the whole request.
GEMINI_25_PRO = PriceSheet(
    Rates(prompt=D("1.25"), completion=D("10"), cached_prompt=D("0.125")),
    tiers=(Tier(200_000, Rates(prompt=D("2.5"), completion=D("15"), cached_prompt=D("0.25"))),),
)
# Gemini 2.5 Flash: text, image and video input $0.30, audio input $1.00, output $2.50.
GEMINI_25_FLASH = PriceSheet(
    Rates(prompt=D("0.3"), completion=D("2.5"), cached_prompt=D("0.03"), audio_prompt=D("1"))
)
# Claude Sonnet 4.5 (claude.com/pricing): $3 in, $15 out, 5-minute cache writes 1.25x ($3.75),
# 1-hour writes 2x ($6), cache reads 0.1x ($0.30).
SONNET_45 = PriceSheet(
    Rates(
        prompt=D("3"),
        completion=D("15"),
        cached_prompt=D("0.3"),
        cache_write=D("3.75"),
        cache_write_1h=D("6"),
    )
)
# DeepSeek (genai-prices' deepseek-flash, from api-docs.deepseek.com): off-peak $0.15 in,
# $0.003 cached, $0.60 out; peak (UTC 01:00-04:00 and 06:00-10:00) twice that.
PEAK = Rates(prompt=D("0.3"), cached_prompt=D("0.006"), completion=D("1.2"))
DEEPSEEK_FLASH = PriceSheet(
    Rates(prompt=D("0.15"), cached_prompt=D("0.003"), completion=D("0.6")),
    windows=(Window(60, 240, PEAK), Window(360, 600, PEAK)),
)


def test_a_long_gemini_prompt_is_priced_wholly_at_the_long_context_tier() -> None:
    # The example: 300k prompt tokens, 4k text + 6k thought tokens out.
    usage = Counts(prompt_tokens=300_000, completion_tokens=10_000, reasoning_tokens=6_000)
    assert GEMINI_25_PRO.cost(usage) == usd("0.90")  # Google: 300k x 2.50 + 10k x 15
    flat = PriceSheet(GEMINI_25_PRO.base)
    assert flat.cost(usage) == usd("0.475")  # what a single rate billed before (-47%)
    # At the threshold the base rates still hold; one token more and the whole request moves.
    assert GEMINI_25_PRO.cost(Counts(200_000, 0)) == usd("0.25")
    assert GEMINI_25_PRO.cost(Counts(200_001, 0)) == usd("0.5000025")


def test_audio_input_is_priced_at_its_own_rate() -> None:
    # 90k audio tokens and 10k text tokens in, 1k out: Google bills 90k x 1.00 + 10k x 0.30
    # + 1k x 2.50 = $0.0955; at the text rate it was $0.0325 (-66%).
    usage = Counts(prompt_tokens=100_000, completion_tokens=1_000, audio_prompt_tokens=90_000)
    assert GEMINI_25_FLASH.cost(usage) == usd("0.0955")
    assert PriceSheet(replace(GEMINI_25_FLASH.base, audio_prompt=None)).cost(usage) == usd("0.0325")


def test_anthropic_cache_writes_are_priced_by_duration() -> None:
    usage = Counts(
        prompt_tokens=60_000,
        completion_tokens=2_000,
        cached_tokens=20_000,
        cache_write_tokens=30_000,
        cache_write_1h_tokens=10_000,
    )
    # 10k fresh x 3 + 20k read x 0.30 + 20k 5-min writes x 3.75 + 10k 1-hour writes x 6
    # + 2k out x 15 = 0.03 + 0.006 + 0.075 + 0.06 + 0.03
    assert SONNET_45.cost(usage) == usd("0.201")


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [
        (0, 59, "0.00075"),  # off-peak
        (1, 0, "0.0015"),  # peak starts (inclusive)
        (3, 59, "0.0015"),
        (4, 0, "0.00075"),  # peak ends (exclusive)
        (8, 30, "0.0015"),  # the second peak window
        (23, 0, "0.00075"),
    ],
)
def test_time_of_day_windows_follow_the_generations_utc_start(
    hour: int, minute: int, expected: str
) -> None:
    usage = Counts(prompt_tokens=1_000, completion_tokens=1_000)  # 1k x 0.15 + 1k x 0.6
    at = datetime(2026, 11, 30, hour, minute, tzinfo=UTC)
    assert DEEPSEEK_FLASH.cost(usage, at) == usd(expected)
    # The same instant in another zone is the same price.
    assert DEEPSEEK_FLASH.cost(usage, at.astimezone(timezone(timedelta(hours=8)))) == usd(expected)


def test_a_window_may_run_past_midnight() -> None:
    night = PriceSheet(
        Rates(prompt=D("1"), completion=D("1")),
        windows=(Window(16 * 60 + 30, 30, Rates(prompt=D("0.5"))),),
    )
    usage = Counts(1_000_000, 0)
    assert night.cost(usage, datetime(2026, 1, 1, 23, 0)) == D("0.5")
    assert night.cost(usage, datetime(2026, 1, 1, 0, 15)) == D("0.5")
    assert night.cost(usage, datetime(2026, 1, 1, 0, 30)) == D("1")
    assert night.cost(usage, None) == D("1")  # no time: the base rates


def test_fees_per_request_image_and_search() -> None:
    sheet = PriceSheet(
        Rates(
            prompt=D("1"),
            completion=D("2"),
            request=D("0.005"),
            image=D("0.001"),
            web_search=D("0.01"),
        )
    )
    usage = Counts(1_000, 1_000, input_images=3, web_searches=2)
    assert sheet.cost(usage) == usd("0.001") + usd("0.002") + usd("0.005") + usd("0.003") + usd(
        "0.02"
    )


def test_reasoning_billed_apart_where_the_sheet_says_so() -> None:
    sheet = PriceSheet(Rates(prompt=D("1"), completion=D("4"), reasoning=D("8")))
    assert sheet.cost(Counts(0, 1_000_000, reasoning_tokens=250_000)) == D("5")


counts = st.integers(min_value=0, max_value=5_000_000)


@given(counts, counts, counts, counts)
def test_a_flat_sheet_costs_the_four_classic_rates(
    prompt: int, completion: int, cached: int, written: int
) -> None:
    sheet = PriceSheet.flat("0.15", "0.6", "0.075", "0.1875")
    cached_in = min(cached, prompt)
    written_in = min(written, prompt - cached_in)
    fresh = prompt - cached_in - written_in
    expected = (
        fresh * D("0.15")
        + cached_in * D("0.075")
        + written_in * D("0.1875")
        + completion * D("0.6")
    ) / 1_000_000
    assert sheet.cost(Counts(prompt, completion, cached, written)) == expected


# Every part of a usage, as an independent amount: the totals are their sums.
PARTS = (
    "text",
    "audio",
    "image",
    "video",
    "cached_text",
    "cached_audio",
    "write_5m",
    "write_1h",
    "completion_text",
    "reasoning",
    "audio_out",
    "web_searches",
    "input_images",
)


def counts_of(parts: dict[str, int]) -> Counts:
    cached = parts["cached_text"] + parts["cached_audio"]
    written = parts["write_5m"] + parts["write_1h"]
    prompt = parts["text"] + parts["audio"] + parts["image"] + parts["video"] + cached + written
    return Counts(
        prompt_tokens=prompt,
        completion_tokens=parts["completion_text"] + parts["reasoning"] + parts["audio_out"],
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=parts["write_1h"],
        audio_prompt_tokens=parts["audio"] + parts["cached_audio"],
        image_prompt_tokens=parts["image"],
        video_prompt_tokens=parts["video"],
        cached_audio_tokens=parts["cached_audio"],
        audio_completion_tokens=parts["audio_out"],
        reasoning_tokens=parts["reasoning"],
        web_searches=parts["web_searches"],
        input_images=parts["input_images"],
    )


SHEETS = [GEMINI_25_PRO, GEMINI_25_FLASH, SONNET_45, DEEPSEEK_FLASH]
part_amounts = st.fixed_dictionaries({p: st.integers(0, 300_000) for p in PARTS})


@given(
    st.sampled_from(SHEETS),
    part_amounts,
    st.sampled_from(PARTS),
    st.integers(1, 300_000),
    st.datetimes(timezones=st.just(UTC)),
)
def test_more_of_any_part_never_costs_less(
    sheet: PriceSheet, parts: dict[str, int], part: str, more: int, at: datetime
) -> None:
    grown = {**parts, part: parts[part] + more}
    assert sheet.cost(counts_of(grown), at) >= sheet.cost(counts_of(parts), at)


@given(st.sampled_from(SHEETS), part_amounts)
def test_a_cost_is_exact_and_survives_the_proto(sheet: PriceSheet, parts: dict[str, int]) -> None:
    again = PriceSheet.from_proto(sheet.to_proto())
    assert again == sheet
    cost = sheet.cost(counts_of(parts))
    assert cost == cost.quantize(Decimal("1e-12"))  # the ledger's 12 places hold it exactly


def test_a_usage_message_becomes_counts_field_by_field() -> None:
    usage = common_pb2.Usage(
        prompt_tokens=10, completion_tokens=9, cached_tokens=8, reasoning_tokens=7,
        cache_write_tokens=6, cache_write_1h_tokens=5, audio_prompt_tokens=4,
        image_prompt_tokens=3, video_prompt_tokens=2, cached_audio_tokens=1,
        audio_completion_tokens=11, web_searches=12, input_images=13,
    )  # fmt: skip
    got = Counts.of(usage)
    for field in fields(Counts):
        if field.name != "requests":
            assert getattr(got, field.name) == getattr(usage, field.name), field.name


@pytest.mark.parametrize(
    ("pricing", "field"),
    [
        (common_pb2.Pricing(prompt_usd_per_mtok="1e3", completion_usd_per_mtok="1"), "prompt"),
        (
            common_pb2.Pricing(
                prompt_usd_per_mtok="1",
                completion_usd_per_mtok="1",
                windows=[common_pb2.PriceWindow(start_utc="25:00", end_utc="01:00")],
            ),
            "windows[0].start_utc",
        ),
    ],
)
def test_a_malformed_price_names_its_field(pricing: common_pb2.Pricing, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        PriceSheet.from_proto(pricing)


def test_tiers_and_windows_that_would_break_the_arithmetic_are_named() -> None:
    base = Rates(prompt=D("1"), completion=D("2"))
    cheaper_tier = PriceSheet(base, tiers=(Tier(100, Rates(prompt=D("0.5"))),))
    assert tier_problems(cheaper_tier) == [
        ("tiers[0].pricing.prompt_usd_per_mtok", "lower than the tier below it")
    ]
    unordered = PriceSheet(
        base, tiers=(Tier(200, Rates(prompt=D("2"))), Tier(100, Rates(prompt=D("3"))))
    )
    assert ("tiers[1].prompt_tokens_above", "thresholds must rise") in tier_problems(unordered)
    empty = PriceSheet(base, tiers=(Tier(100, Rates()),))
    assert ("tiers[0].pricing", "a tier must set at least one rate") in tier_problems(empty)
    overlapping = PriceSheet(
        base, windows=(Window(1380, 120, Rates(prompt=D("2"))), Window(60, 240, Rates()))
    )
    assert ("windows[1]", "overlaps an earlier window") in tier_problems(overlapping)
    assert tier_problems(GEMINI_25_PRO) == tier_problems(DEEPSEEK_FLASH) == []
