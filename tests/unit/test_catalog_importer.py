"""genai-prices entries mapped to the exact catalog Pricing, and import plans (no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from google.protobuf import json_format

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_catalog.importer import plan_import
from switchboard_catalog.importer_map import PROVIDERS_BY_CATALOG_ID
from switchboard_catalog.importer_source import (
    Source,
    catalog_model_id,
    read_genai_prices,
    selected_rows,
)
from switchboard_core.pricing import Counts, PriceSheet

TODAY = date(2026, 11, 30)
Kind = catalog_pb2.CatalogChange.Kind


def _source(*provider_ids: str) -> Source:
    return read_genai_prices(TODAY, selected_rows(provider_ids))


def _pricing(source: Source, endpoint_id: str) -> common_pb2.Pricing:
    (entry,) = [m for m in source.models if m.endpoint.id == endpoint_id]
    return entry.endpoint.pricing


def _expected(data: dict[str, object]) -> common_pb2.Pricing:
    return json_format.ParseDict(data, common_pb2.Pricing())


def test_gemini_2_5_pro_tiers_price_the_whole_request_above_200k() -> None:
    pricing = _pricing(_source("google"), "google:google/gemini-2.5-pro")
    assert pricing == _expected(
        {
            "prompt_usd_per_mtok": "1.25", "completion_usd_per_mtok": "10",
            "cached_prompt_usd_per_mtok": "0.125", "web_search_usd": "0.035",
            "tiers": [{"prompt_tokens_above": 200000, "pricing": {
                "prompt_usd_per_mtok": "2.5", "completion_usd_per_mtok": "15",
                "cached_prompt_usd_per_mtok": "0.25"}}],
        }
    )  # fmt: skip
    sheet = PriceSheet.from_proto(pricing)
    # Google's arithmetic: 250k prompt + 1k output, all at the >200k rates.
    assert sheet.cost(Counts(250_000, 1_000)) == Decimal("0.625") + Decimal("0.015")
    assert sheet.cost(Counts(200_000, 1_000)) == Decimal("0.25") + Decimal("0.01")


def test_claude_haiku_4_5_has_the_one_hour_cache_write() -> None:
    pricing = _pricing(_source("anthropic"), "anthropic:anthropic/claude-haiku-4.5")
    assert pricing == _expected(
        {
            "prompt_usd_per_mtok": "1", "completion_usd_per_mtok": "5",
            "cached_prompt_usd_per_mtok": "0.1", "cache_write_usd_per_mtok": "1.25",
            "cache_write_1h_usd_per_mtok": "2", "web_search_usd": "0.01",
        }
    )  # fmt: skip
    cost = PriceSheet.from_proto(pricing).cost(
        Counts(10_000, 100, cache_write_tokens=4_000, cache_write_1h_tokens=1_000)
    )
    # 6000 fresh x 1 + 3000 x 1.25 + 1000 x 2 + 100 x 5, per million.
    assert cost == Decimal("0.01225")


def test_deepseek_chat_off_peak_base_and_standard_window() -> None:
    pricing = _pricing(_source("deepseek"), "deepseek:deepseek/deepseek-chat")
    assert pricing == _expected(
        {
            "prompt_usd_per_mtok": "0.135", "completion_usd_per_mtok": "0.55",
            "cached_prompt_usd_per_mtok": "0.035",
            "windows": [{"start_utc": "00:30", "end_utc": "16:30", "pricing": {
                "prompt_usd_per_mtok": "0.27", "completion_usd_per_mtok": "1.1",
                "cached_prompt_usd_per_mtok": "0.07"}}],
        }
    )  # fmt: skip
    sheet = PriceSheet.from_proto(pricing)
    day = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    night = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
    assert sheet.cost(Counts(1_000_000, 0), day) == Decimal("0.27")
    assert sheet.cost(Counts(1_000_000, 0), night) == Decimal("0.135")


def test_gemini_2_5_flash_prices_audio_input_and_cached_audio() -> None:
    pricing = _pricing(_source("google"), "google:google/gemini-2.5-flash")
    assert pricing == _expected(
        {
            "prompt_usd_per_mtok": "0.3", "completion_usd_per_mtok": "2.5",
            "cached_prompt_usd_per_mtok": "0.03", "audio_prompt_usd_per_mtok": "1",
            "cached_audio_usd_per_mtok": "0.1", "web_search_usd": "0.035",
        }
    )  # fmt: skip
    (entry,) = [m for m in _source("google").models if m.source_model_id == "gemini-2.5-flash"]
    assert list(entry.model.input_modalities) == ["text", "audio"]


def test_unmapped_providers_are_reported_as_skipped_and_future_prices_are_not() -> None:
    source = _source()
    assert any(line.startswith("provider aws (AWS Bedrock)") for line in source.skipped)
    # Future prices are scheduled (test_catalog_import_schedule.py), not skipped.
    assert not any("scheduled" in line for line in source.skipped)
    assert not any(m.row.catalog_id == "openrouter" for m in source.models)  # opt-in only
    assert all(not m.source_model_id.startswith("claude") for m in _source("google").models)


def test_model_ids_follow_the_catalogs_author_slug_form() -> None:
    rows = PROVIDERS_BY_CATALOG_ID
    assert catalog_model_id(rows["anthropic"], "claude-opus-4-6") == "anthropic/claude-opus-4.6"
    assert catalog_model_id(rows["groq"], "llama-3.3-70b-versatile") == (
        "meta-llama/llama-3.3-70b-versatile"
    )
    assert catalog_model_id(rows["together"], "Qwen/Qwen3.8-Flash") == "qwen/qwen3.8-flash"
    assert catalog_model_id(rows["fireworks"], "ember-1") == "fireworks/ember-1"


def _catalog(endpoint: catalog_pb2.Endpoint) -> catalog_pb2.WatchCatalogResponse:
    snapshot = catalog_pb2.WatchCatalogResponse(version=7)
    snapshot.providers.add(id="openai", display_name="OpenAI", base_url="https://api.openai.com/v1")
    model = snapshot.models.add(id="openai/gpt-4o-mini", display_name="x", context_length=128000)
    model.endpoints.append(endpoint)
    return snapshot


def test_a_seed_endpoint_is_matched_by_upstream_and_keeps_its_id() -> None:
    endpoint = catalog_pb2.Endpoint(
        id="openai:openai/gpt-4o-mini", model_id="openai/gpt-4o-mini", provider_id="openai",
        upstream_model="gpt-4o-mini-2024-07-18", context_length=128000,
        pricing=common_pb2.Pricing(
            prompt_usd_per_mtok="0.2", completion_usd_per_mtok="0.6",
            cached_prompt_usd_per_mtok="0.075"),
    )  # fmt: skip
    plan = plan_import(_source("openai"), _catalog(endpoint), {}, today=TODAY)
    changes = {(c.kind, c.id): c.detail for c in plan.changes}
    assert changes[(Kind.KIND_PRICE_CHANGE, "openai:openai/gpt-4o-mini")] == (
        "prompt 0.2 -> 0.15; web_search (none) -> 0.01"
    )
    assert (Kind.KIND_NEW_ENDPOINT, "openai:openai/gpt-4o-mini") not in changes
    assert plan.listed["openai:openai/gpt-4o-mini"] == "gpt-4o-mini"
    (updated,) = [e for e in plan.endpoints if e.id == "openai:openai/gpt-4o-mini"]
    assert updated.upstream_model == "gpt-4o-mini-2024-07-18"
