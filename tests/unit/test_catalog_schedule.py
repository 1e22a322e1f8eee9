"""Scheduled prices without a database: validation, the import's schedule from genai-prices'
dated prices (the real bundled data) and its change report."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_catalog import validate
from switchboard_catalog.importer import plan_import, schedule_differences
from switchboard_catalog.importer_source import read_genai_prices, selected_rows
from switchboard_core.pricing import PriceSheet

TODAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ARGON = "google:google/gemini-4-argon"
Kind = catalog_pb2.CatalogChange.Kind


def _change(at: datetime, prompt: str = "4", completion: str = "20") -> catalog_pb2.PriceChange:
    change = catalog_pb2.PriceChange(
        pricing=common_pb2.Pricing(prompt_usd_per_mtok=prompt, completion_usd_per_mtok=completion)
    )
    change.effective_time.FromDatetime(at)
    return change


def _endpoint(*changes: catalog_pb2.PriceChange) -> catalog_pb2.Endpoint:
    endpoint = catalog_pb2.Endpoint(
        model_id="google/gemini-4-argon",
        provider_id="google",
        upstream_model="gemini-4-argon",
        pricing=common_pb2.Pricing(
            prompt_usd_per_mtok="2", completion_usd_per_mtok="10", cached_prompt_usd_per_mtok="0.1"
        ),
        context_length=1_048_576,
    )
    endpoint.scheduled_prices.extend(changes)
    return endpoint


def _violations(endpoint: catalog_pb2.Endpoint) -> dict[str, str]:
    return dict(validate.endpoint_violations(endpoint, "endpoint", now=NOW))


def test_a_schedule_in_order_and_in_the_future_is_valid() -> None:
    later = NOW + timedelta(days=1)
    assert _violations(_endpoint(_change(later), _change(later + timedelta(days=1)))) == {}
    # A writer's clock a little behind the catalog's is allowed.
    assert _violations(_endpoint(_change(NOW - timedelta(minutes=4)))) == {}


def test_a_bad_schedule_names_each_field() -> None:
    later = NOW + timedelta(days=1)
    bad_price = _change(later + timedelta(days=2), prompt="-1")
    missing_time = catalog_pb2.PriceChange(pricing=_change(later).pricing)
    violations = _violations(_endpoint(_change(later), _change(later), bad_price, missing_time))
    assert set(violations) == {
        "endpoint.scheduled_prices[1].effective_time",
        "endpoint.scheduled_prices[2].pricing.prompt_usd_per_mtok",
        "endpoint.scheduled_prices[3].effective_time",
    }
    past = _violations(_endpoint(_change(NOW - timedelta(hours=1))))
    assert past == {
        "endpoint.scheduled_prices[0].effective_time": "must be in the future (it is"
        " 2026-11-30T12:00:00Z)"
    }
    # The seed passes no clock: a price already due is applied by the store when it loads.
    assert validate.endpoint_violations(_endpoint(_change(NOW - timedelta(days=9))), "e") == []


def test_at_most_16_scheduled_prices() -> None:
    many = [_change(NOW + timedelta(days=i + 1)) for i in range(validate.MAX_SCHEDULED_PRICES + 1)]
    assert _violations(_endpoint(*many)) == {
        "endpoint.scheduled_prices": "at most 16 scheduled prices"
    }


def test_argons_announced_price_is_scheduled_for_midnight_utc_of_its_start_date() -> None:
    source = read_genai_prices(TODAY, selected_rows(["google"]))
    (argon,) = [m for m in source.models if m.endpoint.id == ARGON]
    assert argon.endpoint.pricing.prompt_usd_per_mtok == "2"
    (scheduled,) = argon.endpoint.scheduled_prices
    assert scheduled.effective_time.ToDatetime(UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert scheduled.price_version == 0
    pricing = scheduled.pricing
    assert (
        pricing.prompt_usd_per_mtok,
        pricing.completion_usd_per_mtok,
        pricing.cached_prompt_usd_per_mtok,
        pricing.web_search_usd,
    ) == ("4", "20", "0.2", "0.014")
    assert not any("gemini-4-argon" in line for line in source.skipped)
    # On its date it is simply the price.
    on_the_day = read_genai_prices(date(2026, 12, 1), selected_rows(["google"]))
    (argon,) = [m for m in on_the_day.models if m.endpoint.id == ARGON]
    assert argon.endpoint.pricing.prompt_usd_per_mtok == "4"
    assert list(argon.endpoint.scheduled_prices) == []


def _catalog(endpoint: catalog_pb2.Endpoint) -> catalog_pb2.WatchCatalogResponse:
    snapshot = catalog_pb2.WatchCatalogResponse(version=3)
    snapshot.providers.add(id="google", display_name="Google")
    model = snapshot.models.add(id="google/gemini-4-argon", display_name="Gemini 4 Argon")
    model.endpoints.append(validate.normalized_endpoint(endpoint))
    return snapshot


def test_the_import_reports_the_schedule_and_a_second_plan_changes_nothing() -> None:
    source = read_genai_prices(TODAY, selected_rows(["google"]))
    # The seeded price, with its web search fee as the source has it, and no schedule.
    endpoint = _endpoint()
    endpoint.pricing.web_search_usd = "0.014"
    plan = plan_import(source, _catalog(endpoint), {}, today=TODAY)
    changes = [(c.kind, c.detail) for c in plan.changes if c.id == ARGON]
    assert changes == [
        (
            Kind.KIND_PRICE_CHANGE,
            "scheduled 2026-12-01: prompt 2 -> 4; completion 10 -> 20; cached_prompt 0.1 -> 0.2",
        )
    ]
    (updated,) = [e for e in plan.endpoints if e.id == ARGON]
    assert len(updated.scheduled_prices) == 1
    again = plan_import(source, _catalog(updated), {}, today=TODAY)
    assert [c for c in again.changes if c.id == ARGON] == []


def test_a_date_the_source_drops_is_reported() -> None:
    current = PriceSheet.from_proto(_endpoint().pricing)
    day = datetime(2027, 1, 1, tzinfo=UTC)
    assert schedule_differences(current, [_change(day)], []) == [
        "no longer scheduled 2027-01-01: prompt 4, completion 20"
    ]
    assert schedule_differences(current, [], [_change(day + timedelta(hours=6))]) == [
        "scheduled 2027-01-01T06:00:00Z: prompt 2 -> 4; completion 10 -> 20;"
        " cached_prompt 0.1 -> (none)"
    ]
