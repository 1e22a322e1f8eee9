"""Every price the import brings costs, under Switchboard's engine, exactly what genai-prices'
own arithmetic says the provider bills: each imported model of each mapped provider, over
fixed usage examples (plain, past the long-context tiers, cache reads and 5-minute and 1-hour
writes, audio input) at four times of day (peak and off-peak windows)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from genai_prices.data import providers as bundled
from genai_prices.types import Usage

from switchboard_catalog import importer_map as mapping
from switchboard_catalog.importer_source import read_genai_prices
from switchboard_core.pricing import Counts, PriceSheet

TIMES = [datetime(2026, 11, 30, hour, 0, tzinfo=UTC) for hour in (2, 8, 12, 20)]
EXAMPLES: list[dict[str, int]] = [
    {"input_tokens": 1_000, "output_tokens": 500},
    {"input_tokens": 300_000, "output_tokens": 10_000},
    {
        "input_tokens": 50_000,
        "output_tokens": 2_000,
        "cache_read_tokens": 5_000,
        "cache_write_tokens": 10_000,
        "cache_write_1h_tokens": 4_000,
    },
    {"input_tokens": 250_000, "output_tokens": 2_000, "cache_read_tokens": 100_000},
    {"input_tokens": 50_000, "output_tokens": 2_000, "input_audio_tokens": 30_000},
]


def counts(example: dict[str, int]) -> Counts:
    return Counts(
        prompt_tokens=example["input_tokens"],
        completion_tokens=example["output_tokens"],
        cached_tokens=example.get("cache_read_tokens", 0),
        cache_write_tokens=example.get("cache_write_tokens", 0),
        cache_write_1h_tokens=example.get("cache_write_1h_tokens", 0),
        audio_prompt_tokens=example.get("input_audio_tokens", 0),
    )


SOURCE = read_genai_prices(TIMES[0].date(), list(mapping.PROVIDERS))
MODELS: dict[tuple[str, str], tuple[Any, Any]] = {
    (provider.id, model.id): (provider, model) for provider in bundled for model in provider.models
}


@pytest.mark.parametrize("row", mapping.PROVIDERS, ids=[r.catalog_id for r in mapping.PROVIDERS])
def test_imported_prices_cost_what_the_source_says(row: mapping.ProviderRow) -> None:
    imported = [m for m in SOURCE.models if m.row == row]
    assert imported, f"nothing imported for {row.catalog_id}"
    checked, wrong = 0, []
    for entry in imported:
        provider, model = MODELS[(row.source_id, entry.source_model_id)]
        sheet = PriceSheet.from_proto(entry.endpoint.pricing)
        for at in TIMES:
            for example in EXAMPLES:
                theirs = model.calc_price(
                    Usage(**example), provider, genai_request_timestamp=at
                ).total_price
                ours = sheet.cost(counts(example), at)
                checked += 1
                if ours != theirs:
                    wrong.append((entry.source_model_id, at.hour, example, ours, theirs))
    assert not wrong, wrong[:5]
    assert checked == len(imported) * len(TIMES) * len(EXAMPLES)


def test_scheduled_prices_cost_what_the_source_says_once_they_start() -> None:
    """Each price the source dates in the future (Gemini 4 Argon's 2026-12-01 price, ...)
    is imported as a scheduled price that, from its time on, costs what genai-prices
    computes for a request made then."""
    scheduled = [
        (entry, change) for entry in SOURCE.models for change in entry.endpoint.scheduled_prices
    ]
    assert any(entry.source_model_id == "gemini-4-argon" for entry, _ in scheduled)
    wrong = []
    for entry, change in scheduled:
        provider, model = MODELS[(entry.row.source_id, entry.source_model_id)]
        sheet = PriceSheet.from_proto(change.pricing)
        start = change.effective_time.ToDatetime(UTC)
        for at in [start.replace(hour=hour) for hour in (0, 2, 8, 12, 20)]:
            for example in EXAMPLES:
                theirs = model.calc_price(
                    Usage(**example), provider, genai_request_timestamp=at
                ).total_price
                if sheet.cost(counts(example), at) != theirs:
                    wrong.append((entry.source_model_id, at, example))
    assert not wrong, wrong[:5]
