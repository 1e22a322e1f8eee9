"""Discovery: each provider's model list, read as the official SDKs read it, paged to the end,
bounded in time; and ``check_catalog`` reporting endpoints a provider no longer lists and
providers it could not ask (without their keys)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from switchboard.catalog.v1 import catalog_pb2
from switchboard_cli.catalog_check import DiscoveryConfig, check_catalog
from switchboard_core.config import Secret
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.providers.base import UpstreamCredentialRejected, UpstreamTimeout
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.providers.http import UpstreamAddressRefused, create_session
from switchboard_router.providers.model_lists import list_models
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.script import Script
from tests.unit.test_router_lifecycle import stamp

OPENAI = catalog_pb2.API_FORMAT_OPENAI_CHAT
ANTHROPIC = catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES
GEMINI = catalog_pb2.API_FORMAT_GEMINI
SERVED = ("model-1", "model-2", "model-3", "model-4", "model-5")
KEY = Secret("sk-test-do-not-print-0123456789")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as made:
        yield made


async def test_the_openai_sdk_reads_the_fake_model_list() -> None:
    async with openai_server.serve(Script(), models=SERVED) as fake:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0)
        async with client:
            ids = [model.id async for model in client.models.list()]
    assert ids == list(SERVED)


async def test_the_anthropic_sdk_pages_the_fake_model_list() -> None:
    async with anthropic_server.serve(Script(), models=SERVED, page_size=2) as fake:
        root = fake.base_url.removesuffix("/v1")
        client = anthropic.AsyncAnthropic(base_url=root, api_key="test", max_retries=0)
        async with client:
            ids = [model.id async for model in client.models.list(limit=2)]
        assert [r.query.get("after_id", "") for r in fake.requests] == [
            "",
            "model-2",
            "model-4",
        ]
    assert ids == list(SERVED)


async def test_the_genai_sdk_pages_the_fake_model_list() -> None:
    async with gemini_server.serve(Script(), models=SERVED, page_size=2) as fake:
        options = genai_types.HttpOptions(
            base_url=fake.base_url.removesuffix("/v1beta"), api_version="v1beta"
        )
        client = genai.Client(api_key="test", http_options=options)
        pager = await client.aio.models.list(config={"page_size": 2})
        names = [model.name async for model in pager]
        assert len(fake.requests) == 3
    assert names == [f"models/{model}" for model in SERVED]


@pytest.mark.parametrize(
    ("serve", "api_format", "pages"),
    [
        (openai_server.serve, OPENAI, 1),
        (anthropic_server.serve, ANTHROPIC, 3),
        (gemini_server.serve, GEMINI, 3),
    ],
    ids=["openai", "anthropic", "gemini"],
)
async def test_each_format_is_listed_to_its_last_page(
    session: aiohttp.ClientSession, serve: Any, api_format: int, pages: int
) -> None:
    kwargs = {} if api_format == OPENAI else {"page_size": 2}
    async with serve(Script(), models=SERVED, **kwargs) as fake:
        listed = await list_models(session, api_format, fake.base_url, KEY, provider="p")
        headers = fake.requests[0].headers
    assert listed.ids == frozenset(SERVED)
    assert (listed.complete, listed.pages) == (True, pages)
    assert KEY.reveal() in " ".join(headers.values())  # each format's own header


async def test_a_listing_cut_by_its_page_bound_says_it_is_incomplete(
    session: aiohttp.ClientSession,
) -> None:
    async with anthropic_server.serve(Script(), models=SERVED, page_size=2) as fake:
        listed = await list_models(
            session, ANTHROPIC, fake.base_url, KEY, provider="anthropic", max_pages=2
        )
    assert (len(listed.ids), listed.complete) == (4, False)


async def test_a_rejected_key_is_the_providers_own_error(session: aiohttp.ClientSession) -> None:
    async with gemini_server.serve(Script(status=401, error_message="API key not valid")) as fake:
        with pytest.raises(UpstreamCredentialRejected) as refused:
            await list_models(session, GEMINI, fake.base_url, KEY, provider="google")
    assert "API key not valid" in refused.value.message


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """A server that accepts connections and never answers."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    for writer in accepted:
        writer.close()
    server.close()


async def test_a_silent_provider_times_out_within_the_bound(
    session: aiohttp.ClientSession, silent: str
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(UpstreamTimeout):
        await list_models(session, OPENAI, silent, KEY, provider="quiet", timeout=0.5)
    assert loop.time() - start < 2.0


async def test_the_address_policy_applies(session: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamAddressRefused):
        await list_models(session, OPENAI, "http://10.0.0.1/v1", KEY, provider="internal")


def model(model_id: str, *endpoints: catalog_pb2.Endpoint) -> catalog_pb2.Model:
    return catalog_pb2.Model(id=model_id, endpoints=list(endpoints))


def endpoint(provider: str, upstream: str, *, active: bool = True) -> catalog_pb2.Endpoint:
    return catalog_pb2.Endpoint(
        id=f"{provider}:{upstream}",
        provider_id=provider,
        upstream_model=upstream,
        status=catalog_pb2.ENDPOINT_STATUS_ACTIVE
        if active
        else catalog_pb2.ENDPOINT_STATUS_DISABLED,
    )


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_check_catalog_reports_removed_models_and_unreachable_providers(
    session: aiohttp.ClientSession, silent: str
) -> None:
    now = datetime.now(UTC)
    retired = endpoint("anthropic", "model-old")
    retired.retirement_time.CopyFrom(stamp(now - timedelta(days=1)))
    models = [
        model("o/one", endpoint("openai", "model-1"), endpoint("anthropic", "model-1")),
        model("o/gone", endpoint("openai", "model-9"), endpoint("google", "model-9")),
        model("g/two", endpoint("google", "models/model-2")),  # Gemini's prefix tolerated
        model(
            "x/disabled",
            endpoint("openai", "model-8", active=False),
        ),
        model("x/retired", retired),  # retired: not checked
        model("q/quiet", endpoint("quiet", "q")),
        model("d/down", endpoint("down", "d")),
        model("n/nokey", endpoint("nokey", "n")),
    ]
    async with (
        openai_server.serve(Script(), models=SERVED) as oa,
        anthropic_server.serve(Script(), models=SERVED, page_size=2) as an,
        gemini_server.serve(Script(), models=SERVED, page_size=2) as ge,
    ):
        providers = [
            catalog_pb2.Provider(id="openai", api_format=OPENAI, base_url=oa.base_url),
            catalog_pb2.Provider(id="anthropic", api_format=ANTHROPIC, base_url=an.base_url),
            catalog_pb2.Provider(id="google", api_format=GEMINI, base_url=ge.base_url),
            catalog_pb2.Provider(id="quiet", api_format=OPENAI, base_url=silent),
            catalog_pb2.Provider(
                id="down", api_format=OPENAI, base_url=f"http://127.0.0.1:{dead_port()}/v1"
            ),
            catalog_pb2.Provider(id="nokey", api_format=OPENAI, base_url=oa.base_url),
        ]
        config = DiscoveryConfig.from_env(
            {
                **{
                    f"SWITCHBOARD_PROVIDER_KEY_{p.upper()}": KEY.reveal()
                    for p in ("openai", "anthropic", "google", "quiet", "down")
                },
                **{
                    f"SWITCHBOARD_PROVIDER_HOSTS_{p.upper()}": "127.0.0.1"
                    for p in ("openai", "anthropic", "google", "quiet", "down", "nokey")
                },
            }
        )
        report = await check_catalog(
            providers,
            models,
            session=session,
            credentials=ProviderCredentials(config.keys, config.hosts),
            timeout=0.5,
        )
    assert [(m.provider_id, m.endpoint_id, m.model_id) for m in report.missing] == [
        ("google", "google:model-9", "o/gone"),
        ("openai", "openai:model-9", "o/gone"),
    ]
    checks = {p.provider_id: p for p in report.providers}
    assert (checks["anthropic"].endpoints, checks["anthropic"].listed) == (1, 5)
    assert checks["openai"].endpoints == 2  # the disabled one is not checked
    assert checks["quiet"].reason == "UPSTREAM_TIMEOUT"
    assert checks["down"].reason == "UPSTREAM_UNAVAILABLE"
    assert checks["nokey"].reason == "PROVIDER_NOT_CONFIGURED"
    assert "SWITCHBOARD_PROVIDER_KEY_NOKEY" in checks["nokey"].problem
    assert not report.clean
    assert KEY.reveal() not in str(report.to_dict())
