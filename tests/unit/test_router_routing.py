"""Endpoint planning: filters, price order, provider order, fallbacks, variants. The default
order (weighted by price, on live figures) is tests/unit/test_router_live_routing.py's; these
ask for ``sort=price`` where they check a strict order."""

from __future__ import annotations

import pytest

from switchboard_core.errors import InvalidArgument, NotFound
from switchboard_core.pricing import PriceSheet
from switchboard_router.canonical import (
    CompletionRequest,
    ImagePart,
    Message,
    ProviderPrefs,
    Role,
)
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.routing import plan, split_variant


def route(
    model: str,
    provider: str,
    prompt: str,
    completion: str,
    params: str = "",
    inputs: str = "text",
) -> Route:
    return Route(
        endpoint_id=f"{provider}:{model}",
        model_id=model,
        provider_id=provider,
        api_format=1,
        base_url=f"http://{provider}.invalid/v1",
        dialect=provider,
        upstream_model=model,
        price=PriceSheet.flat(prompt, completion),
        context_length=8192,
        max_completion_tokens=0,
        supported_parameters=frozenset(params.split()),
        input_modalities=frozenset(inputs.split()),
    )


LLAMA = "meta-llama/llama-3.3-70b-instruct"
SNAPSHOT = Snapshot(
    version=1,
    routes={
        LLAMA: (
            route(LLAMA, "together", "0.88", "0.88", "temperature seed"),
            route(LLAMA, "groq", "0.59", "0.79", "temperature"),
            route(LLAMA, "deepinfra", "0.23", "0.40", "temperature seed"),
        ),
        "openai/gpt-4o-mini": (
            route("openai/gpt-4o-mini", "openai", "0.15", "0.6", inputs="text image"),
        ),
    },
    provider_ids=frozenset({"together", "groq", "deepinfra", "openai"}),
)


def request(model: str = LLAMA, **kwargs: object) -> CompletionRequest:
    prefs = ProviderPrefs(**kwargs.pop("prefs", {}))  # type: ignore[arg-type]
    kwargs.setdefault("messages", (Message.of(Role.USER, "hi"),))
    return CompletionRequest(
        model=model,
        provider=prefs,
        **kwargs,  # type: ignore[arg-type]
    )


def providers(routes: list[Route]) -> list[str]:
    return [r.provider_id for r in routes]


def test_sort_price_and_floor_are_cheapest_first() -> None:
    by_price = ["deepinfra", "groq", "together"]
    assert providers(plan(request(prefs={"sort": "price"}), SNAPSHOT)) == by_price
    assert providers(plan(request(LLAMA + ":floor"), SNAPSHOT)) == by_price
    # The default draws an order (weighted by price) but always plans every endpoint.
    assert sorted(providers(plan(request(), SNAPSHOT))) == sorted(by_price)


def test_order_moves_providers_first_and_allow_fallbacks_false_drops_the_rest() -> None:
    assert providers(plan(request(prefs={"order": ("together",)}), SNAPSHOT)) == [
        "together",
        "deepinfra",
        "groq",
    ]
    only_order = request(prefs={"order": ("groq", "together"), "allow_fallbacks": False})
    assert providers(plan(only_order, SNAPSHOT)) == ["groq", "together"]


def test_only_ignore_and_max_price() -> None:
    from decimal import Decimal

    assert providers(plan(request(prefs={"only": frozenset({"groq"})}), SNAPSHOT)) == ["groq"]
    ignore = request(prefs={"ignore": frozenset({"deepinfra"}), "sort": "price"})
    assert providers(plan(ignore, SNAPSHOT)) == ["groq", "together"]
    cheap = request(prefs={"max_prompt_price": Decimal("0.6"), "sort": "price"})
    assert providers(plan(cheap, SNAPSHOT)) == ["deepinfra", "groq"]


def test_require_parameters_keeps_endpoints_that_support_them() -> None:
    needs_seed = request(seed=1, prefs={"require_parameters": True, "sort": "price"})
    assert providers(plan(needs_seed, SNAPSHOT)) == ["deepinfra", "together"]


def test_fallback_models_follow_the_main_model() -> None:
    planned = plan(
        request(fallback_models=("openai/gpt-4o-mini",), prefs={"sort": "price"}), SNAPSHOT
    )
    assert providers(planned) == ["deepinfra", "groq", "together", "openai"]


def test_variants_resolve_to_the_base_model() -> None:
    assert split_variant(LLAMA + ":floor") == (LLAMA, "floor")
    assert split_variant("mistralai/ministral-8b:2410") == ("mistralai/ministral-8b:2410", "")
    # :nitro sorts by live throughput; with no figures yet, the cheapest leads.
    assert providers(plan(request(LLAMA + ":nitro"), SNAPSHOT))[0] == "deepinfra"


def test_unknown_model_and_unknown_fallback() -> None:
    with pytest.raises(NotFound) as missing:
        plan(request("acme/none"), SNAPSHOT)
    assert missing.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(InvalidArgument) as bad:
        plan(request(fallback_models=("acme/none",)), SNAPSHOT)
    assert bad.value.violations == [
        ("fallback_models[0]", "model 'acme/none' is not in the catalog")
    ]


def test_preferences_that_match_nothing() -> None:
    with pytest.raises(NotFound) as none:
        plan(request(prefs={"only": frozenset({"nobody"})}), SNAPSHOT)
    assert none.value.reason == "NO_ENDPOINT_MATCHES"
    assert none.value.metadata == {"model": LLAMA, "filter": "provider.only"}


def test_require_parameters_that_no_endpoint_supports_names_the_missing_ones() -> None:
    needs = request(seed=1, top_k=5, prefs={"require_parameters": True})
    with pytest.raises(NotFound) as none:
        plan(needs, SNAPSHOT)
    assert none.value.reason == "NO_ENDPOINT_SUPPORTS_PARAMETERS"
    assert str(none.value).endswith("the closest lacks: top_k")


def test_images_go_only_to_models_that_take_them() -> None:
    picture = (Message(Role.USER, (ImagePart(url="https://example.com/a.png"),)),)
    with pytest.raises(InvalidArgument) as refused:
        plan(request(messages=picture), SNAPSHOT)
    assert refused.value.violations == [
        ("messages", f"model {LLAMA!r} does not accept image input")
    ]
    planned = plan(request(messages=picture, fallback_models=("openai/gpt-4o-mini",)), SNAPSHOT)
    assert providers(planned) == ["openai"]
