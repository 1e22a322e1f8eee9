"""API keys' allow-lists in the router: refused models name the rule and the field, routes of
other providers are dropped before anything is planned upstream, the public model list shows a
key what it can use, and the key cache never outlives a key's expiry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import NotFound, PermissionDenied
from switchboard_router.account import usable_models
from switchboard_router.auth import KeyVerifier
from switchboard_router.catalog_cache import Snapshot
from switchboard_router.key_rules import KeyRules, allowed_plan
from tests.unit.test_router_routing import LLAMA, SNAPSHOT, providers, request

MINI = "openai/gpt-4o-mini"


def test_no_allow_lists_allow_everything() -> None:
    rules = KeyRules.from_key(metering_pb2.ApiKey(id="key_1"))
    assert rules == KeyRules()
    by_price = request(fallback_models=(MINI,), prefs={"sort": "price"})
    planned = allowed_plan(rules, by_price, SNAPSHOT)
    assert providers(planned) == ["deepinfra", "groq", "together", "openai"]


def test_a_model_outside_the_allow_list_is_refused_naming_the_field() -> None:
    rules = KeyRules(models=frozenset({LLAMA}))
    assert providers(allowed_plan(rules, request(LLAMA + ":floor"), SNAPSHOT))[0] == "deepinfra"
    with pytest.raises(PermissionDenied) as main:
        allowed_plan(rules, request(MINI), SNAPSHOT)
    assert main.value.reason == "MODEL_NOT_ALLOWED"
    assert main.value.metadata == {"field": "model", "model": MINI, "rule": "allowed_models"}
    with pytest.raises(PermissionDenied) as fallback:
        allowed_plan(rules, request(fallback_models=(LLAMA, MINI + ":nitro")), SNAPSHOT)
    assert fallback.value.metadata["field"] == "fallback_models[1]"
    assert fallback.value.metadata["model"] == MINI
    assert "allowed_models" in fallback.value.message and LLAMA in fallback.value.message


def test_the_allow_list_is_checked_before_the_catalog() -> None:
    """An unknown model a key may not use is refused for the rule, not looked up."""
    rules = KeyRules(models=frozenset({LLAMA}))
    with pytest.raises(PermissionDenied):
        allowed_plan(rules, request("acme/none"), SNAPSHOT)
    with pytest.raises(NotFound):  # allowed, but not in the catalog
        allowed_plan(KeyRules(models=frozenset({"acme/none"})), request("acme/none"), SNAPSHOT)


def test_routes_of_other_providers_are_dropped_keeping_the_order() -> None:
    rules = KeyRules(providers=frozenset({"together", "groq", "openai"}))
    by_price = request(fallback_models=(MINI,), prefs={"sort": "price"})
    planned = allowed_plan(rules, by_price, SNAPSHOT)
    assert providers(planned) == ["groq", "together", "openai"]
    ordered = request(prefs={"order": ("together",)})
    assert providers(allowed_plan(rules, ordered, SNAPSHOT)) == ["together", "groq"]


def test_no_allowed_provider_left_is_permission_denied() -> None:
    rules = KeyRules(providers=frozenset({"openai"}))
    with pytest.raises(PermissionDenied) as refused:
        allowed_plan(rules, request(), SNAPSHOT)
    assert refused.value.reason == "PROVIDER_NOT_ALLOWED"
    assert refused.value.metadata == {"model": LLAMA, "rule": "allowed_providers"}
    assert "deepinfra, groq, together" in refused.value.message
    # The provider's preferences narrow first; the allow-list then leaves nothing.
    only_groq = request(prefs={"only": frozenset({"groq"})})
    with pytest.raises(PermissionDenied):
        allowed_plan(KeyRules(providers=frozenset({"together"})), only_groq, SNAPSHOT)


def _model(model_id: str, *endpoints: tuple[str, bool]) -> catalog_pb2.Model:
    model = catalog_pb2.Model(id=model_id, display_name=model_id)
    for provider, active in endpoints:
        model.endpoints.add(
            id=f"{provider}:{model_id}",
            model_id=model_id,
            provider_id=provider,
            upstream_model=model_id,
            pricing=common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2"),
            status=catalog_pb2.ENDPOINT_STATUS_ACTIVE
            if active
            else catalog_pb2.ENDPOINT_STATUS_DISABLED,
        )
    return model


CATALOG = Snapshot.from_proto(
    catalog_pb2.WatchCatalogResponse(
        version=3,
        providers=[
            catalog_pb2.Provider(id=p, api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT)
            for p in ("alpha", "beta")
        ],
        models=[
            _model("z/last", ("alpha", True)),
            _model("a/first", ("alpha", True), ("beta", False)),
            _model("m/both", ("alpha", True), ("beta", True)),
            _model("q/disabled", ("beta", False)),
            _model("u/unknown-provider", ("gamma", True)),
        ],
    )
)


def ids(models: list[catalog_pb2.Model]) -> list[str]:
    return [model.id for model in models]


def test_the_model_list_shows_routable_models_by_id_with_their_routable_endpoints() -> None:
    models, more = usable_models(CATALOG, KeyRules(), "", "", 100)
    assert (ids(models), more) == (["a/first", "m/both", "z/last"], False)
    assert [e.provider_id for e in models[0].endpoints] == ["alpha"]  # beta's is disabled
    assert len(CATALOG.models[0].endpoints) == 2  # the snapshot's own copy is untouched


def test_the_model_list_pages_and_filters_by_provider() -> None:
    first, more = usable_models(CATALOG, KeyRules(), "", "", 2)
    assert (ids(first), more) == (["a/first", "m/both"], True)
    rest, more = usable_models(CATALOG, KeyRules(), "", "m/both", 2)
    assert (ids(rest), more) == (["z/last"], False)
    beta, _ = usable_models(CATALOG, KeyRules(), "beta", "", 100)
    assert ids(beta) == ["m/both"]
    assert [e.provider_id for e in beta[0].endpoints] == ["alpha", "beta"]


def test_the_model_list_hides_what_a_key_may_not_use() -> None:
    only_beta = KeyRules(providers=frozenset({"beta"}))
    models, _ = usable_models(CATALOG, only_beta, "", "", 100)
    assert ids(models) == ["m/both"]
    assert [e.provider_id for e in models[0].endpoints] == ["beta"]
    some = KeyRules(models=frozenset({"z/last", "q/disabled"}))
    assert ids(usable_models(CATALOG, some, "", "", 100)[0]) == ["z/last"]


class _Stub:
    """Metering's VerifyApiKey, counting calls."""

    def __init__(self, key: metering_pb2.ApiKey) -> None:
        self.key = key
        self.calls = 0

    async def VerifyApiKey(self, request: Any, **kwargs: Any) -> metering_pb2.VerifyApiKeyResponse:
        self.calls += 1
        return metering_pb2.VerifyApiKeyResponse(api_key=self.key)


def _verifier(key: metering_pb2.ApiKey, ttl: float) -> tuple[KeyVerifier, _Stub]:
    # The channel is never used: its stub is replaced.
    verifier = KeyVerifier(grpc.aio.insecure_channel("127.0.0.1:9"), ttl_seconds=ttl)
    stub = _Stub(key)
    verifier._stub = stub  # type: ignore[assignment]
    return verifier, stub


async def test_the_key_cache_never_outlives_the_keys_expiry() -> None:
    secret = "sk-sb-v1-" + "s" * 43
    key = metering_pb2.ApiKey(
        id="key_1", account_id="acme", allowed_models=[MINI], allowed_providers=["openai"]
    )
    key.expire_time.FromNanoseconds(int((time.time() + 0.2) * 1e9))
    verifier, stub = _verifier(key, ttl=60.0)
    caller = await verifier.verify_secret(secret)
    assert caller.rules == KeyRules(models=frozenset({MINI}), providers=frozenset({"openai"}))
    assert caller.expire_time == pytest.approx(key.expire_time.ToNanoseconds() / 1e9)
    await verifier.verify_secret(secret)
    assert stub.calls == 1  # cached...
    await asyncio.sleep(0.25)
    await verifier.verify_secret(secret)
    assert stub.calls == 2  # ...until the key's expiry, not for the cache's 60 s


async def test_a_key_past_its_expiry_is_not_cached_at_all() -> None:
    key = metering_pb2.ApiKey(id="key_1", account_id="acme")
    key.expire_time.FromNanoseconds(int((time.time() - 1) * 1e9))
    verifier, stub = _verifier(key, ttl=60.0)
    for _ in range(2):
        await verifier.verify_secret("sk-sb-v1-" + "s" * 43)
    assert stub.calls == 2
