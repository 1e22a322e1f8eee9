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
from switchboard_core.upstreams import UpstreamPolicy

PRICE_FIELDS = (
    "prompt_usd_per_mtok",
    "completion_usd_per_mtok",
    "cached_prompt_usd_per_mtok",
    "cache_write_usd_per_mtok",
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
        assert set(pricing) <= set(PRICE_FIELDS), endpoint["id"]
        for name in PRICE_FIELDS:
            if name in pricing:
                assert isinstance(pricing[name], str), (endpoint["id"], name)
                parse_usd(pricing[name])
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
        assert endpoint["pricing"].keys() == set(PRICE_FIELDS), endpoint["id"]
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
