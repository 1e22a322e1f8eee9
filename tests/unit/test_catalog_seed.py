"""The packaged seed file is valid, real-looking and strict about its format."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog.config import packaged_seed_path
from switchboard_catalog.seed import SeedError, load_seed, parse_seed
from switchboard_core.catalog_ids import MODEL_ID, MODEL_ID_MAX, PROVIDER_ID
from switchboard_core.money import parse_usd
from switchboard_core.pricing import ALL_RATES
from switchboard_core.upstreams import UpstreamPolicy

PRICE_FIELDS = tuple(ALL_RATES.values())
CACHE_FIELDS = (
    "prompt_usd_per_mtok",
    "completion_usd_per_mtok",
    "cached_prompt_usd_per_mtok",
    "cache_write_usd_per_mtok",
    "cache_write_1h_usd_per_mtok",
)
# The demo upstream's host, which the seed's demo provider points at.
POLICY = UpstreamPolicy(["127.0.0.1"])


def _raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(packaged_seed_path().read_text(encoding="utf-8"))
    return data


def _endpoints(provider_id: str) -> dict[str, dict[str, Any]]:
    return {e["model_id"]: e for e in _raw()["endpoints"] if e["provider_id"] == provider_id}


def test_packaged_seed_loads() -> None:
    seed = load_seed(packaged_seed_path(), policy=POLICY)
    assert seed.as_of
    assert len(seed.entries.providers) >= 10
    assert len(seed.entries.models) >= 20
    assert all(e.status == catalog_pb2.ENDPOINT_STATUS_ACTIVE for e in seed.entries.endpoints)


def test_no_json_numbers_that_are_not_integers() -> None:
    floats: list[Decimal] = []

    def remember(text: str) -> Decimal:
        floats.append(Decimal(text))
        return Decimal(text)

    json.loads(packaged_seed_path().read_text(encoding="utf-8"), parse_float=remember)
    assert floats == []


def test_every_price_is_a_decimal_string() -> None:
    for endpoint in _raw()["endpoints"]:
        pricing = endpoint["pricing"]
        assert set(pricing) <= {*PRICE_FIELDS, "tiers", "windows"}, endpoint["id"]
        nested = [t["pricing"] for t in pricing.get("tiers", [])]
        nested += [w["pricing"] for w in pricing.get("windows", [])]
        for sheet in (pricing, *nested):
            for name in PRICE_FIELDS:
                if name in sheet:
                    assert isinstance(sheet[name], str), (endpoint["id"], name)
                    parse_usd(sheet[name])
        assert "prompt_usd_per_mtok" in pricing
        assert "completion_usd_per_mtok" in pricing


def test_ids_match_their_patterns_and_references_exist() -> None:
    raw = _raw()
    provider_ids = {p["id"] for p in raw["providers"]}
    model_ids = {m["id"] for m in raw["models"]}
    assert all(PROVIDER_ID.match(p) for p in provider_ids)
    assert all(MODEL_ID.match(m) and len(m) <= MODEL_ID_MAX for m in model_ids)
    for endpoint in raw["endpoints"]:
        assert endpoint["provider_id"] in provider_ids, endpoint["id"]
        assert endpoint["model_id"] in model_ids, endpoint["id"]
        assert endpoint["id"] == f"{endpoint['provider_id']}:{endpoint['model_id']}"
    served = {e["model_id"] for e in raw["endpoints"]}
    assert served == model_ids, "every model has an endpoint"


def test_providers_have_their_real_base_urls() -> None:
    providers = {p["id"]: p for p in _raw()["providers"]}
    expected = {
        "openai": ("https://api.openai.com/v1", "API_FORMAT_OPENAI_CHAT"),
        "anthropic": ("https://api.anthropic.com/v1", "API_FORMAT_ANTHROPIC_MESSAGES"),
        "google": ("https://generativelanguage.googleapis.com/v1beta", "API_FORMAT_GEMINI"),
        "together": ("https://api.together.xyz/v1", "API_FORMAT_OPENAI_CHAT"),
        "groq": ("https://api.groq.com/openai/v1", "API_FORMAT_OPENAI_CHAT"),
        "fireworks": ("https://api.fireworks.ai/inference/v1", "API_FORMAT_OPENAI_CHAT"),
        "deepinfra": ("https://api.deepinfra.com/v1/openai", "API_FORMAT_OPENAI_CHAT"),
        "mistral": ("https://api.mistral.ai/v1", "API_FORMAT_OPENAI_CHAT"),
        "deepseek": ("https://api.deepseek.com/v1", "API_FORMAT_OPENAI_CHAT"),
    }
    for provider_id, (base_url, api_format) in expected.items():
        assert providers[provider_id]["base_url"] == base_url
        assert providers[provider_id]["api_format"] == api_format


def test_sources_and_date_are_recorded() -> None:
    raw = _raw()
    assert raw["as_of"]
    assert raw["sources"]
    assert all(url.startswith("https://") for url in raw["sources"])


def test_prompt_cache_prices_where_providers_publish_them() -> None:
    for endpoint in _endpoints("anthropic").values():
        # 5-minute and 1-hour cache writes (1.25x and 2x input) besides cache reads
        assert endpoint["pricing"].keys() >= set(CACHE_FIELDS), endpoint["id"]
    for provider_id in ("google", "openai"):
        for endpoint in _endpoints(provider_id).values():
            assert "cached_prompt_usd_per_mtok" in endpoint["pricing"], endpoint["id"]


def test_open_models_are_served_by_several_hosts() -> None:
    for model_id in ("meta-llama/llama-3.3-70b-instruct", "meta-llama/llama-3.1-8b-instruct"):
        for host in ("together", "groq", "fireworks", "deepinfra"):
            assert model_id in _endpoints(host), (host, model_id)
    for model_id in ("deepseek/deepseek-chat-v3", "deepseek/deepseek-r1"):
        for host in ("deepseek", "together", "fireworks"):
            assert model_id in _endpoints(host), (host, model_id)
    assert any(m.startswith("mistralai/") for m in _endpoints("mistral"))


def test_retired_entries_stay_and_name_their_successors() -> None:
    raw = _raw()
    models = {m["id"]: m for m in raw["models"]}
    for model in models.values():
        successor = model.get("successor_model_id")
        if successor:
            assert successor in models and successor != model["id"]
            assert "retirement_time" not in models[successor], (model["id"], successor)
    for model_id in (
        "openai/gpt-4.1-nano",
        "openai/o3-mini",
        "openai/o4-mini",
        "anthropic/claude-opus-4.1",
        "anthropic/claude-sonnet-4",
        "anthropic/claude-3.5-haiku",
        "google/gemini-2.0-flash",
    ):
        assert models[model_id]["retirement_time"] < raw["as_of"], model_id
        assert models[model_id]["successor_model_id"], model_id
    for model_id in (
        "anthropic/claude-sonnet-4.5",
        "google/gemini-2.5-pro",
        "google/gemini-2.5-flash",
    ):
        assert models[model_id]["deprecation_time"] <= raw["as_of"] + "T00:00:00Z"
        assert models[model_id]["retirement_time"] == "2026-12-01T00:00:00Z"
    retired_hosts = {
        e["id"]
        for e in raw["endpoints"]
        if e.get("retirement_time", "9") <= raw["as_of"] + "T23:59:59Z"
    }
    for host, count in (("groq", 2), ("fireworks", 4), ("mistral", 3)):
        ids = {
            e["id"]
            for e in raw["endpoints"]
            if e["provider_id"] == host and e["upstream_model"] in _OLD_UPSTREAMS
        }
        assert len(ids) == count and ids <= retired_hosts, host
    assert {"deepseek:deepseek/deepseek-chat-v3", "deepseek:deepseek/deepseek-r1"} <= retired_hosts


_OLD_UPSTREAMS = {
    "llama-3.3-70b-versatile",
    "llama-3.1-8b-instant",
    "accounts/fireworks/models/llama-v3p3-70b-instruct",
    "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "accounts/fireworks/models/deepseek-v3",
    "accounts/fireworks/models/deepseek-r1",
    "mistral-large-2411",
    "mistral-small-2501",
    "open-mistral-nemo",
}


def test_a_successor_that_is_not_in_the_seed_is_named() -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["models"][0]["successor_model_id"] = "openai/not-in-seed"

    assert "successor_model_id: no model 'openai/not-in-seed' in the seed" in _broken(change)


def test_demo_entries() -> None:
    seed = load_seed(packaged_seed_path(), policy=POLICY, demo_base_url="http://127.0.0.1:9999/v1")
    provider = next(p for p in seed.entries.providers if p.id == "switchboard")
    assert provider.display_name == "Switchboard demo"
    assert provider.api_format == catalog_pb2.API_FORMAT_OPENAI_CHAT
    assert provider.base_url == "http://127.0.0.1:9999/v1"
    model = next(m for m in seed.entries.models if m.id == "switchboard/demo")
    assert model.context_length == 8192
    endpoint = next(e for e in seed.entries.endpoints if e.id == "switchboard:switchboard/demo")
    assert endpoint.upstream_model == "demo"
    assert endpoint.pricing.prompt_usd_per_mtok == "1"
    assert endpoint.pricing.completion_usd_per_mtok == "2"
    assert list(endpoint.supported_parameters) == [
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
    ]


def _broken(change: Any) -> str:
    raw = copy.deepcopy(_raw())
    change(raw)
    with pytest.raises(SeedError) as caught:
        parse_seed(json.dumps(raw), source="test.json", policy=POLICY)
    return str(caught.value)


def test_bad_price_names_the_entry_and_field() -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["endpoints"][0]["pricing"]["prompt_usd_per_mtok"] = "1e-3"

    message = _broken(change)
    first = _raw()["endpoints"][0]["id"]
    assert f"endpoints[0] ({first})" in message
    assert "endpoints[0].pricing.prompt_usd_per_mtok" in message


def test_price_written_as_a_number_is_rejected() -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["endpoints"][2]["pricing"]["completion_usd_per_mtok"] = 0.6

    assert "endpoints[2].pricing.completion_usd_per_mtok: a JSON number" in _broken(change)


def test_unknown_keys_are_rejected() -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["providers"][1]["api_key"] = "sk-nope"
        raw["extra"] = 1

    message = _broken(change)
    assert "providers[1] (anthropic)" in message
    assert "api_key" in message
    assert "extra: unknown top-level key" in message


def test_missing_references_and_duplicates_are_named() -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["endpoints"][0]["model_id"] = "openai/not-in-seed"
        raw["endpoints"][0]["id"] = "openai:openai/not-in-seed"
        raw["models"].append(copy.deepcopy(raw["models"][1]))

    message = _broken(change)
    assert "model_id: no model 'openai/not-in-seed' in the seed" in message
    assert f"({_raw()['models'][1]['id']}): id: duplicate" in message


def test_bad_provider_fields_are_all_named() -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["providers"][0].update(id="Open AI", api_format="API_FORMAT_UNSPECIFIED")
        raw["providers"][0]["base_url"] = "ftp://example.com"

    message = _broken(change)
    for field in ("providers[0].id", "providers[0].api_format", "providers[0].base_url"):
        assert field in message
