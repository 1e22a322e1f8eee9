"""Deprecation and retirement in the router: retired endpoints are not routed to, a retired
model fails fast naming its date and successor (fallbacks still apply), the snapshot drops
endpoints as their retirement passes, and the public model list hides them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_router.account import usable_models
from switchboard_router.canonical import CompletionRequest, Message, Role
from switchboard_router.catalog_cache import CatalogCache, Snapshot
from switchboard_router.key_rules import KeyRules
from switchboard_router.lifecycle import (
    Lifecycle,
    ModelRetired,
    deprecation_notice,
    retired_error,
)
from switchboard_router.routing import plan

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
RETIRED_ON = datetime(2026, 10, 22, tzinfo=UTC)
HAIKU_OLD = "anthropic/claude-3.5-haiku"
HAIKU_NEW = "anthropic/claude-haiku-4.5"


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def endpoint(model_id: str, provider: str, **times: datetime) -> catalog_pb2.Endpoint:
    found = catalog_pb2.Endpoint(
        id=f"{provider}:{model_id}",
        model_id=model_id,
        provider_id=provider,
        upstream_model=model_id.split("/")[-1],
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2"),
        status=catalog_pb2.ENDPOINT_STATUS_ACTIVE,
    )
    for name, when in times.items():  # retirement_time, deprecation_time
        getattr(found, name).CopyFrom(stamp(when))
    return found


def catalog(*models: catalog_pb2.Model) -> catalog_pb2.WatchCatalogResponse:
    return catalog_pb2.WatchCatalogResponse(
        version=7,
        providers=[
            catalog_pb2.Provider(id=p, api_format=catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES)
            for p in ("anthropic", "bedrock", "vertex")
        ],
        models=list(models),
    )


OLD = catalog_pb2.Model(
    id=HAIKU_OLD,
    endpoints=[endpoint(HAIKU_OLD, "anthropic")],
    deprecation_time=stamp(datetime(2026, 7, 1, tzinfo=UTC)),
    retirement_time=stamp(RETIRED_ON),
    successor_model_id=HAIKU_NEW,
)
NEW = catalog_pb2.Model(
    id=HAIKU_NEW,
    endpoints=[
        endpoint(HAIKU_NEW, "anthropic"),
        # Bedrock stopped serving it last week; Vertex stops next month.
        endpoint(HAIKU_NEW, "bedrock", retirement_time=NOW - timedelta(days=7)),
        endpoint(
            HAIKU_NEW,
            "vertex",
            deprecation_time=NOW - timedelta(days=30),
            retirement_time=NOW + timedelta(days=30),
        ),
    ],
)
# Every endpoint retired, the model itself not: retired at the last of them.
ORPHAN = catalog_pb2.Model(
    id="x/orphan",
    endpoints=[
        endpoint("x/orphan", "anthropic", retirement_time=NOW - timedelta(days=3)),
        endpoint("x/orphan", "vertex", retirement_time=NOW - timedelta(days=1)),
    ],
)
SNAPSHOT = Snapshot.from_proto(catalog(OLD, NEW, ORPHAN), NOW)


def ask(model: str, *fallbacks: str) -> CompletionRequest:
    return CompletionRequest(
        model=model, messages=(Message.of(Role.USER, "hi"),), fallback_models=fallbacks
    )


def test_a_retired_endpoint_is_never_routed_to() -> None:
    planned = plan(ask(HAIKU_NEW), SNAPSHOT, NOW)  # in a price-weighted order: compare sets
    assert sorted(r.provider_id for r in planned) == ["anthropic", "vertex"]


def test_an_endpoint_is_skipped_once_its_retirement_passes_even_in_an_older_snapshot() -> None:
    later = NOW + timedelta(days=31)
    assert [r.provider_id for r in plan(ask(HAIKU_NEW), SNAPSHOT, later)] == ["anthropic"]


def test_a_retired_model_fails_fast_naming_the_date_and_the_successor() -> None:
    with pytest.raises(ModelRetired) as refused:
        plan(ask(HAIKU_OLD), SNAPSHOT, NOW)
    error = refused.value
    assert error.code.name == "FAILED_PRECONDITION"
    assert error.reason == "MODEL_RETIRED"
    assert error.message == f"{HAIKU_OLD} was retired on 2026-10-22; use {HAIKU_NEW}"
    assert error.metadata == {
        "model": HAIKU_OLD,
        "retirement_time": "2026-10-22T00:00:00Z",
        "retirement_date": "2026-10-22",
        "successor_model_id": HAIKU_NEW,
    }
    status = error.to_status()
    assert status.code.name == "FAILED_PRECONDITION"


def test_a_variant_of_a_retired_model_is_refused_by_its_base_id() -> None:
    with pytest.raises(ModelRetired) as refused:
        plan(ask(HAIKU_OLD + ":floor"), SNAPSHOT, NOW)
    assert refused.value.metadata["model"] == HAIKU_OLD


def test_a_model_whose_endpoints_all_retired_is_retired_at_the_last_of_them() -> None:
    with pytest.raises(ModelRetired) as refused:
        plan(ask("x/orphan"), SNAPSHOT, NOW)
    assert refused.value.metadata["retirement_date"] == "2026-10-31"
    assert "successor_model_id" not in refused.value.metadata
    assert refused.value.message == "x/orphan was retired on 2026-10-31"


def test_a_retired_primary_with_a_live_fallback_is_served_by_the_fallback() -> None:
    routes = plan(ask(HAIKU_OLD, HAIKU_NEW), SNAPSHOT, NOW)
    assert {r.model_id for r in routes} == {HAIKU_NEW}


def test_a_retired_fallback_is_skipped() -> None:
    routes = plan(ask(HAIKU_NEW, HAIKU_OLD), SNAPSHOT, NOW)
    assert {r.model_id for r in routes} == {HAIKU_NEW}


def test_before_its_retirement_a_deprecated_model_still_routes() -> None:
    before = RETIRED_ON - timedelta(days=1)
    snapshot = Snapshot.from_proto(catalog(OLD, NEW), before)
    (route,) = plan(ask(HAIKU_OLD), snapshot, before)
    assert route.lifecycle.deprecated(before)
    assert deprecation_notice(route.model_id, route.lifecycle) == (
        f"{HAIKU_OLD}; retires=2026-10-22; successor={HAIKU_NEW}"
    )


def test_an_endpoint_deprecated_on_its_own_carries_its_dates() -> None:
    vertex = next(r for r in SNAPSHOT.routes[HAIKU_NEW] if r.provider_id == "vertex")
    assert vertex.lifecycle.deprecated(NOW)
    assert deprecation_notice(HAIKU_NEW, vertex.lifecycle) == f"{HAIKU_NEW}; retires=2026-12-01"
    anthropic = next(r for r in SNAPSHOT.routes[HAIKU_NEW] if r.provider_id == "anthropic")
    assert not anthropic.lifecycle.deprecated(NOW)


def test_the_notice_leaves_out_what_is_unknown() -> None:
    deprecated = Lifecycle(deprecation_time=NOW)
    assert deprecation_notice("a/b", deprecated) == "a/b"
    assert retired_error("a/b", Lifecycle(retirement_time=NOW)).message == (
        "a/b was retired on 2026-11-01"
    )


def test_the_public_model_list_hides_retired_endpoints_and_passes_lifecycle_through() -> None:
    models, _ = usable_models(SNAPSHOT, KeyRules(), "", "", 100)
    assert [m.id for m in models] == [HAIKU_NEW]  # the retired ones have nothing to route to
    assert [e.provider_id for e in models[0].endpoints] == ["anthropic", "vertex"]
    vertex = models[0].endpoints[1]
    assert vertex.retirement_time.ToDatetime(tzinfo=UTC) == NOW + timedelta(days=30)

    before = RETIRED_ON - timedelta(days=1)
    models, _ = usable_models(Snapshot.from_proto(catalog(OLD), before), KeyRules(), "", "", 9)
    assert models[0].successor_model_id == HAIKU_NEW
    assert models[0].retirement_time.ToDatetime(tzinfo=UTC) == RETIRED_ON


async def test_the_cached_snapshot_is_rebuilt_when_a_retirement_passes() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never used: no watch is started
    cache = CatalogCache(channel)
    clock = [NOW]
    cache.clock = lambda: clock[0]
    cache.apply(catalog(NEW))
    assert cache.snapshot.fresh_until == NOW + timedelta(days=30)
    assert len(cache.snapshot.routes[HAIKU_NEW]) == 2
    clock[0] = NOW + timedelta(days=30)
    assert [r.provider_id for r in cache.snapshot.routes[HAIKU_NEW]] == ["anthropic"]
    assert cache.snapshot.fresh_until is None
    assert cache.snapshot.version == 7
    await channel.close()
