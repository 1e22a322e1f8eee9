"""Field-by-field validation of catalog entries."""

from __future__ import annotations

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_catalog import convert, validate


def _endpoint(**overrides: object) -> catalog_pb2.Endpoint:
    endpoint = catalog_pb2.Endpoint(
        model_id="acme/widget-1",
        provider_id="acme",
        upstream_model="widget-1",
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="0.15", completion_usd_per_mtok="0.6"),
        context_length=8192,
    )
    for name, value in overrides.items():
        setattr(endpoint, name, value)
    return endpoint


def test_a_good_endpoint_passes_and_is_normalized() -> None:
    endpoint = _endpoint()
    assert validate.endpoint_violations(endpoint, "endpoint") == []
    normalized = validate.normalized_endpoint(endpoint)
    assert normalized.id == "acme:acme/widget-1"
    assert normalized.status == catalog_pb2.ENDPOINT_STATUS_ACTIVE


def test_endpoint_violations_use_proto_paths() -> None:
    endpoint = _endpoint(id="other:acme/widget-1", context_length=100, max_completion_tokens=200)
    endpoint.pricing.prompt_usd_per_mtok = "-1"
    endpoint.pricing.cached_prompt_usd_per_mtok = "0.1.2"
    endpoint.supported_parameters.extend(["temperature", "temperature", "Bad Name"])
    fields = dict(validate.endpoint_violations(endpoint, "endpoint"))
    assert set(fields) == {
        "endpoint.id",
        "endpoint.pricing.prompt_usd_per_mtok",
        "endpoint.pricing.cached_prompt_usd_per_mtok",
        "endpoint.max_completion_tokens",
        "endpoint.supported_parameters[1]",
        "endpoint.supported_parameters[2]",
    }


def test_model_ids() -> None:
    assert validate.model_id_problem("openai/gpt-4o-mini") is None
    assert validate.model_id_problem("deepseek/deepseek-r1:free") is None
    assert validate.model_id_problem("gpt-4o") is not None
    assert validate.model_id_problem("Openai/gpt-4o") is not None
    assert validate.model_id_problem("a/" + "b" * 127) is not None


def test_a_trailing_newline_is_no_part_of_an_id_or_name() -> None:
    """The patterns end in ``$``, which also matches before a final newline: ``match`` let
    ``"acme\\n"`` through as a provider id (and into the catalog the routers load)."""
    assert validate.provider_id_problem("acme\n") is not None
    assert validate.model_id_problem("acme/widget-1\n") is not None
    endpoint = _endpoint(quantization="fp8\n")
    endpoint.supported_parameters.append("temperature\n")
    fields = dict(validate.endpoint_violations(endpoint, "endpoint"))
    assert set(fields) == {"endpoint.quantization", "endpoint.supported_parameters[0]"}
    model = catalog_pb2.Model(
        id="acme/widget-1",
        display_name="Widget",
        context_length=8192,
        input_modalities=["text\n"],
        output_modalities=["text"],
    )
    assert dict(validate.model_violations(model, "model")).keys() == {"model.input_modalities[0]"}


def test_provider_violations() -> None:
    provider = catalog_pb2.Provider(id="-bad", base_url="https://x.example/v1?key=1")
    fields = dict(validate.provider_violations(provider, "provider"))
    assert set(fields) == {
        "provider.id",
        "provider.display_name",
        "provider.api_format",
        "provider.base_url",
    }


def test_enum_round_trips() -> None:
    for value in catalog_pb2.ApiFormat.values():
        if value != catalog_pb2.API_FORMAT_UNSPECIFIED:
            assert convert.api_format_from_db(convert.api_format_to_db(value)) == value
    assert convert.api_format_from_db("from_the_future") == catalog_pb2.API_FORMAT_UNSPECIFIED
    assert convert.status_to_db(catalog_pb2.ENDPOINT_STATUS_UNSPECIFIED) == "active"
    assert convert.status_from_db("disabled") == catalog_pb2.ENDPOINT_STATUS_DISABLED


def test_a_price_dearer_than_the_ledger_accepts_is_refused() -> None:
    from switchboard.common.v1 import common_pb2
    from switchboard_catalog.validate import MAX_USD_PER_MTOK, pricing_violations

    fine = common_pb2.Pricing(prompt_usd_per_mtok="600", completion_usd_per_mtok="600")
    assert pricing_violations(fine, "pricing") == []
    dear = common_pb2.Pricing(
        prompt_usd_per_mtok=str(MAX_USD_PER_MTOK + 1), completion_usd_per_mtok="1"
    )
    assert [field for field, _ in pricing_violations(dear, "pricing")] == [
        "pricing.prompt_usd_per_mtok"
    ]


def test_a_price_with_more_than_six_decimal_places_is_refused() -> None:
    """A whole number of pico-dollars a token: every cost is then exact at 12 places, which
    is what the ledger and budgets count in."""
    from switchboard.common.v1 import common_pb2
    from switchboard_catalog.validate import pricing_violations

    fine = common_pb2.Pricing(prompt_usd_per_mtok="0.075", completion_usd_per_mtok="0.1500000")
    assert pricing_violations(fine, "p") == []
    fine_grained = common_pb2.Pricing(prompt_usd_per_mtok="0.1234567", completion_usd_per_mtok="1")
    assert [f for f, _ in pricing_violations(fine_grained, "p")] == ["p.prompt_usd_per_mtok"]


def _fields(violations: validate.Violations) -> dict[str, str]:
    return dict(violations)


def test_every_rate_is_checked_and_named() -> None:
    pricing = common_pb2.Pricing(
        prompt_usd_per_mtok="1",
        completion_usd_per_mtok="2",
        cache_write_1h_usd_per_mtok="-2",
        reasoning_usd_per_mtok="0.0000001",
        request_usd="0.0000000000001",
        image_usd="0.001",
    )
    fields = _fields(validate.pricing_violations(pricing, "endpoint.pricing"))
    assert set(fields) == {
        "endpoint.pricing.cache_write_1h_usd_per_mtok",
        "endpoint.pricing.reasoning_usd_per_mtok",
        "endpoint.pricing.request_usd",
    }


def test_tiers_and_windows_are_checked_under_their_paths() -> None:
    pricing = common_pb2.Pricing(prompt_usd_per_mtok="1.25", completion_usd_per_mtok="10")
    pricing.tiers.add(
        prompt_tokens_above=200_000,
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="x"),
    )
    pricing.tiers.add(prompt_tokens_above=100_000)
    pricing.windows.add(start_utc="16:30", end_utc="24:00")
    fields = _fields(validate.pricing_violations(pricing, "endpoint.pricing"))
    assert set(fields) == {
        "endpoint.pricing.tiers[0].pricing.completion_usd_per_mtok",
        "endpoint.pricing.windows[0].end_utc",
    }
    # Once every rate parses, the tier rules (switchboard_core.pricing.tier_problems) apply.
    pricing.tiers[0].pricing.completion_usd_per_mtok = "15"
    pricing.windows[0].end_utc = "00:30"
    pricing.windows.add(start_utc="00:00", end_utc="01:00", pricing=pricing.tiers[0].pricing)
    fields = _fields(validate.pricing_violations(pricing, "endpoint.pricing"))
    assert set(fields) == {
        "endpoint.pricing.tiers[0].pricing.prompt_usd_per_mtok",  # lower than the base
        "endpoint.pricing.tiers[1].prompt_tokens_above",  # thresholds must rise
        "endpoint.pricing.tiers[1].pricing",  # sets no rate
        "endpoint.pricing.windows[1]",  # overlaps 16:30-00:30
    }


def test_a_price_has_a_bounded_number_of_tiers_and_windows() -> None:
    pricing = common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2")
    for i in range(validate.MAX_TIERS + 1):
        pricing.tiers.add(prompt_tokens_above=i * 1000, pricing=common_pb2.Pricing(
            prompt_usd_per_mtok=str(2 + i)
        ))  # fmt: skip
    assert _fields(validate.pricing_violations(pricing, "p")) == {
        "p.tiers": f"at most {validate.MAX_TIERS} tiers"
    }
    del pricing.tiers[validate.MAX_TIERS :]
    assert validate.pricing_violations(pricing, "p") == []
    for minute in range(validate.MAX_WINDOWS + 1):
        pricing.windows.add(start_utc=f"00:{minute:02d}", end_utc=f"00:{minute + 1:02d}")
    assert _fields(validate.pricing_violations(pricing, "p")) == {
        "p.windows": f"at most {validate.MAX_WINDOWS} windows"
    }


def test_nested_tiers_are_refused() -> None:
    pricing = common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2")
    tier = pricing.tiers.add(prompt_tokens_above=10)
    tier.pricing.prompt_usd_per_mtok = "2"
    tier.pricing.tiers.add(prompt_tokens_above=20)
    fields = _fields(validate.pricing_violations(pricing, "p"))
    assert set(fields) == {"p.tiers[0].pricing.tiers"}


def test_lifecycle_dates_and_successor() -> None:
    model = catalog_pb2.Model(
        id="openai/o3-mini",
        display_name="o3-mini",
        context_length=200_000,
        input_modalities=["text"],
        output_modalities=["text"],
        successor_model_id="openai/o3-mini",
    )
    model.deprecation_time.FromJsonString("2026-04-22T00:00:00Z")
    model.retirement_time.FromJsonString("2026-04-21T00:00:00Z")
    fields = _fields(validate.model_violations(model, "model"))
    assert set(fields) == {"model.retirement_time", "model.successor_model_id"}
    model.successor_model_id = "Not A Model"
    assert "model.successor_model_id" in _fields(validate.model_violations(model, "model"))
    model.successor_model_id = "openai/gpt-5.6-sol"
    model.retirement_time.FromJsonString("2026-10-23T00:00:00Z")
    assert validate.model_violations(model, "model") == []
    endpoint = _endpoint()
    endpoint.deprecation_time.FromJsonString("2026-10-23T00:00:00Z")
    endpoint.retirement_time.FromJsonString("2026-10-22T00:00:00Z")
    assert "endpoint.retirement_time" in _fields(validate.endpoint_violations(endpoint, "endpoint"))


def test_price_rules_are_canonical_json_without_the_classic_rates() -> None:
    pricing = common_pb2.Pricing(
        prompt_usd_per_mtok="1.50",
        completion_usd_per_mtok="2",
        cache_write_1h_usd_per_mtok="3.000",
    )
    pricing.tiers.add(
        prompt_tokens_above=200_000, pricing=common_pb2.Pricing(prompt_usd_per_mtok="2.50")
    )
    assert convert.price_rules_to_db(pricing) == (
        '{"cache_write_1h_usd_per_mtok": "3", "tiers": [{"pricing": {"prompt_usd_per_mtok":'
        ' "2.5"}, "prompt_tokens_above": "200000"}]}'
    )
    assert convert.price_rules_to_db(common_pb2.Pricing(prompt_usd_per_mtok="1")) == "{}"
