"""The router's cost path: every generation is priced with its endpoint's whole price sheet
at its create_time (tiers, time windows, every token type, fees), the usage the adapters read
carries the detail that needs, and the ledger event names the price version.

The worked examples are the issue's, with the providers' published arithmetic:

- Gemini 2.5 Pro, a 300,000-token prompt and 10,000 output tokens: the whole request is priced
  at the >200K tier, $2.50 and $15 per million: $0.75 + $0.15 = $0.90 (flat rates said $0.475).
- Anthropic Claude Sonnet 4 prompt caching: $3 input, $3.75 a five-minute write, $6 an
  hour-long write, $0.30 a read, $15 output; web search $10 per 1,000 searches.
- Audio: Gemini 2.5 Flash ($0.30 text, $1.00 audio input, $2.50 output) and gpt-4o-audio
  ($2.50 text, $40 audio input, $10 text output, $80 audio output).
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.pricing import Counts, PriceSheet, Rates, Tier, Window
from switchboard_core.usage_bounds import usage_problems
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CompletionRequest,
    Finish,
    FinishEvent,
    ImagePart,
    Message,
    PromptUsage,
    Role,
    TextPart,
    UsageReport,
)
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.generation import Generation, cost_of
from switchboard_router.providers import anthropic_stream, gemini_stream
from switchboard_router.providers.openai_fields import parse_usage
from switchboard_router.usage_sanity import clamped, report_problems
from switchboard_router.usage_sink import usage_event, usage_message

D = Decimal


def rates(**values: str) -> Rates:
    return Rates(**{name: D(value) for name, value in values.items()})


GEMINI_25_PRO = PriceSheet(
    rates(prompt="1.25", completion="10", cached_prompt="0.31"),
    (Tier(200_000, rates(prompt="2.50", completion="15", cached_prompt="0.625")),),
)
GEMINI_25_FLASH = PriceSheet(
    rates(prompt="0.30", completion="2.50", cached_prompt="0.075", audio_prompt="1.00")
)
GPT_4O_AUDIO = PriceSheet(
    rates(prompt="2.50", completion="10", audio_prompt="40", audio_completion="80")
)
CLAUDE_SONNET_4 = PriceSheet(
    rates(
        prompt="3",
        completion="15",
        cached_prompt="0.30",
        cache_write="3.75",
        cache_write_1h="6",
        web_search="0.01",
    )
)
# DeepSeek's off-peak discount, 16:30 to 00:30 UTC: half price.
DEEPSEEK = PriceSheet(
    rates(prompt="0.27", completion="1.10"),
    windows=(Window(16 * 60 + 30, 30, rates(prompt="0.135", completion="0.55")),),
)


def route(price: PriceSheet, version: int = 0) -> Route:
    return Route(
        endpoint_id="p:m",
        model_id="p/m",
        provider_id="p",
        api_format=1,
        base_url="https://p.test/v1",
        dialect="p",
        upstream_model="m",
        price=price,
        context_length=1_000_000,
        max_completion_tokens=65_536,
        supported_parameters=frozenset(),
        price_version=version,
    )


REQUEST = CompletionRequest(model="p/m", messages=(Message.of(Role.USER, "hi"),))


def generation(
    price: PriceSheet,
    *,
    create_time: float | None = None,
    request: CompletionRequest = REQUEST,
    version: int = 0,
) -> Generation:
    return Generation(
        id="gen-1",
        attempt=0,
        caller=Caller("key_1", "acct"),
        request=request,
        route=route(price, version),
        started=time.monotonic(),
        create_time=time.time() if create_time is None else create_time,
        streamed=True,
    )


def test_gemini_25_pro_prices_a_long_prompt_wholly_at_its_tier() -> None:
    g = generation(GEMINI_25_PRO)
    assert g.cost(UsageReport(300_000, 10_000)) == D("0.90")
    assert g.cost(UsageReport(200_000, 10_000)) == D("0.35")  # at the threshold: base rates
    # What the old four flat rates said of the long prompt.
    assert PriceSheet.flat("1.25", "10").cost(Counts(300_000, 10_000)) == D("0.475")


def test_the_snapshot_builds_the_whole_sheet_and_its_version_from_the_catalog() -> None:
    message = catalog_pb2.WatchCatalogResponse(
        version=3,
        providers=[
            catalog_pb2.Provider(
                id="google", base_url="https://g.test", api_format=catalog_pb2.API_FORMAT_GEMINI
            )
        ],
        models=[
            catalog_pb2.Model(
                id="google/gemini-2.5-pro",
                endpoints=[
                    catalog_pb2.Endpoint(
                        id="google:gemini-2.5-pro",
                        provider_id="google",
                        upstream_model="gemini-2.5-pro",
                        pricing=GEMINI_25_PRO.to_proto(),
                        price_version=42,
                    )
                ],
            )
        ],
    )
    (found,) = Snapshot.from_proto(message).routes["google/gemini-2.5-pro"]
    assert found.price == GEMINI_25_PRO
    assert found.price_version == 42
    assert found.price_key == D("11.25")  # the base rates: what cheapest-first compares
    assert cost_of(found, UsageReport(300_000, 10_000)) == D("0.90")


def test_a_generation_is_priced_with_the_window_in_force_at_its_create_time() -> None:
    peak = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()
    off_peak = datetime(2026, 3, 2, 23, 0, tzinfo=UTC).timestamp()
    after_midnight = datetime(2026, 3, 3, 0, 15, tzinfo=UTC).timestamp()
    usage = UsageReport(1_000_000, 1_000_000)
    assert generation(DEEPSEEK, create_time=peak).cost(usage) == D("1.37")
    assert generation(DEEPSEEK, create_time=off_peak).cost(usage) == D("0.685")
    assert generation(DEEPSEEK, create_time=after_midnight).cost(usage) == D("0.685")


def test_anthropic_hour_long_cache_writes_and_web_searches_are_read_and_priced() -> None:
    state = anthropic_stream.StreamState("anthropic")
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "usage": {
                "input_tokens": 2,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 3500,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1500,
                    "ephemeral_1h_input_tokens": 2000,
                },
                "output_tokens": 1,
            },
        },
    }
    out: list[object] = []
    state.handle(start, out)  # type: ignore[arg-type]
    assert out == [PromptUsage(3502, cache_write_tokens=3500, cache_write_1h_tokens=2000)]
    state.handle(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 300, "server_tool_use": {"web_search_requests": 2}},
        },
        [],
    )
    (usage,) = [e for e in state.final() if isinstance(e, UsageReport)]
    assert usage == UsageReport(
        3502, 300, cache_write_tokens=3500, cache_write_1h_tokens=2000, web_searches=2
    )
    # 2 x $3 + 1,500 x $3.75 + 2,000 x $6 + 300 x $15, per million; 2 searches at $0.01.
    assert generation(CLAUDE_SONNET_4).cost(usage) == D("0.022131") + D("0.02")
    # Had every write been priced as a five-minute one: $0.004500 less.
    five_minutes = replace(usage, cache_write_1h_tokens=0)
    assert generation(CLAUDE_SONNET_4).cost(five_minutes) == D("0.037631")


def test_without_the_split_anthropic_cache_writes_are_five_minute_ones() -> None:
    state = anthropic_stream.StreamState("anthropic")
    state.handle(
        {
            "type": "message_delta",
            "usage": {
                "input_tokens": 10,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 50,
                },
            },
        },
        [],
    )
    # No total: the durations add up to it.
    assert state._prompt_usage() == PromptUsage(
        160, cache_write_tokens=150, cache_write_1h_tokens=50
    )


def test_gemini_audio_input_by_modality_is_read_and_priced_at_the_audio_rate() -> None:
    body = {
        "candidates": [{"content": {"parts": [{"text": "A dog barks."}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 100_000,
            "candidatesTokenCount": 2_000,
            "cachedContentTokenCount": 20_000,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 30_000},
                {"modality": "AUDIO", "tokenCount": 60_000},
                {"modality": "IMAGE", "tokenCount": 10_000},
            ],
            "cacheTokensDetails": [
                {"modality": "AUDIO", "tokenCount": 15_000},
                {"modality": "IMAGE", "tokenCount": 5_000},
            ],
            "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 2_000}],
        },
    }
    events = gemini_stream.StreamState("google").whole(orjson.dumps(body))
    (usage,) = [e for e in events if isinstance(e, UsageReport)]
    assert usage == UsageReport(
        100_000,
        2_000,
        cached_tokens=20_000,
        audio_prompt_tokens=60_000,  # cached audio included
        cached_audio_tokens=15_000,
        image_prompt_tokens=5_000,  # the fresh ones
    )
    assert not report_problems(usage)
    # Fresh: 45,000 audio at $1.00, 5,000 image and 30,000 text at $0.30; cached: 20,000 at
    # $0.075 (cached audio falls back to the cached price); 2,000 output at $2.50.
    expected = (
        45_000 * D("1.00") + 35_000 * D("0.30") + 20_000 * D("0.075") + 2_000 * D("2.50")
    ) / 1_000_000
    assert generation(GEMINI_25_FLASH).cost(usage) == expected == D("0.062")


def test_openai_audio_in_and_out_are_read_and_priced_apart() -> None:
    usage = parse_usage(
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 400},
        }
    )
    assert usage == UsageReport(1_000, 500, audio_prompt_tokens=800, audio_completion_tokens=400)
    # 200 x $2.50 + 800 x $40 + 100 x $10 + 400 x $80, per million.
    assert generation(GPT_4O_AUDIO).cost(usage) == D("0.0655")


def test_images_in_the_request_pay_a_price_per_image() -> None:
    sheet = PriceSheet(rates(prompt="1", completion="2", image="0.001", request="0.0005"))
    picture = Message(Role.USER, (TextPart("what are these?"), ImagePart(url="https://x/a.png")))
    two = CompletionRequest(model="p/m", messages=(picture, picture))
    g = generation(sheet, request=two)
    assert g.cost(UsageReport(0, 0)) == D("0.0025")  # two images and the request fee
    completed = metering_pb2.GENERATION_STATUS_COMPLETED
    event = usage_event(g, completed, UsageReport(0, 0), D(0), FinishEvent(Finish.STOP))
    assert event.usage.input_images == 2
    assert Counts.of(event.usage).input_images == 2


def test_the_ledger_event_names_the_price_version_and_carries_every_usage_field() -> None:
    usage = UsageReport(
        1_000,
        500,
        cached_tokens=100,
        reasoning_tokens=50,
        cache_write_tokens=200,
        cache_write_1h_tokens=150,
        audio_prompt_tokens=300,
        image_prompt_tokens=40,
        video_prompt_tokens=30,
        cached_audio_tokens=20,
        audio_completion_tokens=60,
        web_searches=3,
    )
    g = generation(CLAUDE_SONNET_4, version=7)
    cost = g.cost(usage)
    event = usage_event(
        g, metering_pb2.GENERATION_STATUS_COMPLETED, usage, cost, FinishEvent(Finish.STOP)
    )
    assert event.price_version == 7
    assert event.usage == common_pb2.Usage(
        prompt_tokens=1_000,
        completion_tokens=500,
        cached_tokens=100,
        reasoning_tokens=50,
        cache_write_tokens=200,
        cache_write_1h_tokens=150,
        audio_prompt_tokens=300,
        image_prompt_tokens=40,
        video_prompt_tokens=30,
        cached_audio_tokens=20,
        audio_completion_tokens=60,
        web_searches=3,
    )
    # What metering recomputes from the event is what the router charged.
    at = event.create_time.ToDatetime(tzinfo=UTC)
    assert CLAUDE_SONNET_4.cost(Counts.of(event.usage), at) == cost
    assert usage_message(usage) == event.usage


counts = st.integers(min_value=0, max_value=2_000_000)


@given(counts, counts, counts, counts, counts, counts, counts, counts, counts, counts, counts)
def test_a_clamped_report_costs_what_the_report_costs_and_metering_accepts_it(
    prompt: int,
    completion: int,
    cached: int,
    write: int,
    write_1h: int,
    audio: int,
    image: int,
    video: int,
    cached_audio: int,
    reasoning: int,
    audio_out: int,
) -> None:
    report = UsageReport(
        prompt,
        completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
        audio_prompt_tokens=audio,
        image_prompt_tokens=image,
        video_prompt_tokens=video,
        cached_audio_tokens=cached_audio,
        audio_completion_tokens=audio_out,
    )
    sheet = PriceSheet(
        rates(
            prompt="1",
            completion="3",
            cached_prompt="0.1",
            cache_write="1.25",
            cache_write_1h="2",
            audio_prompt="7",
            image_prompt="1.5",
            video_prompt="1.7",
            cached_audio="0.7",
            audio_completion="20",
            reasoning="4",
        )
    )
    kept = clamped(report)
    assert cost_of(route(sheet), kept) == cost_of(route(sheet), report)
    assert not report_problems(kept)
    assert not usage_problems(kept.prompt_tokens, kept.completion_tokens, kept.cached_tokens)
