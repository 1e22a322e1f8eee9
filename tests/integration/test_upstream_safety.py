"""Upstreams cannot be turned into a credential leak or an SSRF, over real HTTP.

A capture server on 127.0.0.1 records every request it gets. The router's relay and adapters
run for real against it: a provider's key never reaches a host not declared for it (and no
request does), redirects are not followed, a name that resolves to a refused address is not
connected to, and the catalog refuses every bad base URL at write time.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import grpc
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog import validate
from switchboard_catalog.config import packaged_seed_path
from switchboard_catalog.seed import SeedError, parse_seed
from switchboard_catalog.service import CatalogService, Context
from switchboard_catalog.store import CatalogStore
from switchboard_catalog.watch import CatalogBroadcaster
from switchboard_core.budget import BudgetStore
from switchboard_core.config import Secret
from switchboard_core.errors import FailedPrecondition, InvalidArgument
from switchboard_core.pricing import PriceSheet
from switchboard_core.upstreams import STRICT, UpstreamPolicy
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, Message, Role
from switchboard_router.catalog_cache import Route
from switchboard_router.providers.base import UpstreamError
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.providers.http import AddressRefused, PolicyResolver, create_session
from switchboard_router.providers.registry import build_adapters
from switchboard_router.relay import Relay, RelayEvent
from switchboard_router.usage_sink import UsageSink

PROMPT = "the tenant's confidential prompt"
REQUEST = CompletionRequest(model="x/y", messages=(Message.of(Role.USER, PROMPT),))
KEY = "sk-real-provider-credential"
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")
# The capture server's address, allowed so that only the credential binding is under test.
LOOPBACK = UpstreamPolicy(["127.0.0.1"])
# 127.0.0.1 in fullwidth digits, which aiohttp (yarl) normalizes to 127.0.0.1.
FULLWIDTH_LOOPBACK = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"


@dataclass
class Capture:
    """A local HTTP server that records every request and answers ``status``."""

    url: str = ""
    port: int = 0
    status: int = 503
    requests: list[dict[str, Any]] = field(default_factory=list)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    found = Capture()

    async def record(request: web.Request) -> web.StreamResponse:
        found.requests.append(
            {
                "path": request.path,
                "host": request.host,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": (await request.read()).decode(errors="replace"),
            }
        )
        return web.json_response({"error": {"message": "captured"}}, status=found.status)

    async with serve(record) as port:
        found.port, found.url = port, f"http://127.0.0.1:{port}/v1"
        yield found


class FixedResolver(AbstractResolver):
    """Answers every name with ``addresses``: a DNS server under an attacker's control."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses or ("127.0.0.1",)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


def route(provider_id: str, api_format: int, base_url: str, dialect: str = "") -> Route:
    return Route(
        endpoint_id=f"{provider_id}:x/y",
        model_id="x/y",
        provider_id=provider_id,
        api_format=api_format,
        base_url=base_url,
        dialect=dialect or provider_id,
        upstream_model="m",
        price=PriceSheet.flat("1", "2"),
        context_length=8192,
        max_completion_tokens=1024,
        supported_parameters=frozenset(),
    )


@asynccontextmanager
async def relay_for(
    credentials: ProviderCredentials,
    redis_client: redis.Redis,
    redis_prefix: str,
    policy: UpstreamPolicy = LOOPBACK,
    resolver: AbstractResolver | None = None,
) -> AsyncIterator[Relay]:
    """The router's real relay, adapters and HTTP session (metering is never reached: no
    generation starts in these tests)."""
    session = create_session(policy, resolver=resolver)
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    admission = Admission(BudgetStore(redis_client, redis_prefix + "budget:"), 4096, 60)
    sink = UsageSink(redis_client, redis_prefix + "usage", channel)
    try:
        yield Relay(build_adapters(session), credentials, sink, admission)
    finally:
        await session.close()
        await channel.close(None)


async def run(relay: Relay, routes: list[Route]) -> list[RelayEvent]:
    caller = Caller(key_id="key-1", account_id="account-1")
    return [e async for e in relay.run(REQUEST, routes, caller, timeout=10, streamed=True)]


def credential_headers(request: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = request["headers"]
    return {name: headers[name] for name in CREDENTIAL_HEADERS if name in headers}


FORMATS = [
    ("openai", catalog_pb2.API_FORMAT_OPENAI_CHAT, "authorization", f"Bearer {KEY}"),
    ("anthropic", catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES, "x-api-key", KEY),
    ("google", catalog_pb2.API_FORMAT_GEMINI, "x-goog-api-key", KEY),
    ("deepseek", catalog_pb2.API_FORMAT_OPENAI_CHAT, "authorization", f"Bearer {KEY}"),
]


@pytest.mark.parametrize(("provider", "api_format", "header", "value"), FORMATS)
async def test_a_credential_never_reaches_a_host_not_declared_for_its_provider(
    capture: Capture,
    redis_client: redis.Redis,
    redis_prefix: str,
    provider: str,
    api_format: int,
    header: str,
    value: str,
) -> None:
    # The catalog points a seeded provider at the capture server; the address policy allows
    # 127.0.0.1, so only the credential binding stands in the way.
    credentials = ProviderCredentials({provider: Secret(KEY)})
    async with relay_for(credentials, redis_client, redis_prefix) as relay:
        with pytest.raises(FailedPrecondition) as refused:
            await run(relay, [route(provider, api_format, capture.url)])
    assert capture.requests == []  # no credential, no prompt, no request at all
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "PROVIDER_HOST_NOT_DECLARED"
    variable = f"SWITCHBOARD_PROVIDER_HOSTS_{provider.upper()}"
    assert provider in refused.value.message and "127.0.0.1" in refused.value.message
    assert variable in refused.value.message
    assert KEY not in refused.value.message

    # Declared on the router, the host gets the request and the credential.
    declared = ProviderCredentials({provider: Secret(KEY)}, {provider: ["127.0.0.1"]})
    async with relay_for(declared, redis_client, redis_prefix) as relay:
        with pytest.raises(UpstreamError):  # the capture server answers 503
            await run(relay, [route(provider, api_format, capture.url)])
    assert len(capture.requests) == 1
    assert credential_headers(capture.requests[0]) == {header: value}
    assert PROMPT in capture.requests[0]["body"]


async def test_an_undeclared_endpoint_is_skipped_for_the_next_one(
    capture: Capture, redis_client: redis.Redis, redis_prefix: str
) -> None:
    credentials = ProviderCredentials(
        {"openai": Secret(KEY), "deepseek": Secret("sk-deepseek")}, {"deepseek": ["127.0.0.1"]}
    )
    fmt = catalog_pb2.API_FORMAT_OPENAI_CHAT
    routes = [
        route("openai", fmt, f"http://127.0.0.1:{capture.port}/openai"),
        route("deepseek", fmt, f"http://127.0.0.1:{capture.port}/deepseek"),
    ]
    async with relay_for(credentials, redis_client, redis_prefix) as relay:
        with pytest.raises(UpstreamError):
            await run(relay, routes)
    assert [r["path"] for r in capture.requests] == ["/deepseek/chat/completions"]
    assert credential_headers(capture.requests[0]) == {"authorization": "Bearer sk-deepseek"}


async def test_providers_that_need_no_credential_are_not_bound(
    capture: Capture, redis_client: redis.Redis, redis_prefix: str
) -> None:
    fmt = catalog_pb2.API_FORMAT_OPENAI_CHAT
    demo = route("switchboard", fmt, capture.url)  # the demo upstream's dialect: no key needed
    async with relay_for(ProviderCredentials({}), redis_client, redis_prefix) as relay:
        with pytest.raises(UpstreamError):
            await run(relay, [demo])
    assert len(capture.requests) == 1 and credential_headers(capture.requests[0]) == {}

    # A key configured for such a provider is bound like any other.
    credentials = ProviderCredentials({"vllm": Secret(KEY)})
    async with relay_for(credentials, redis_client, redis_prefix) as relay:
        with pytest.raises(FailedPrecondition) as refused:
            await run(relay, [route("vllm", fmt, capture.url)])
    assert refused.value.reason == "PROVIDER_HOST_NOT_DECLARED"
    assert len(capture.requests) == 1

    # Without any key, a provider that needs one is still "not configured".
    async with relay_for(ProviderCredentials({}), redis_client, redis_prefix) as relay:
        with pytest.raises(FailedPrecondition) as refused:
            await run(relay, [route("openai", fmt, capture.url)])
    assert refused.value.reason == "PROVIDER_NOT_CONFIGURED"
    assert len(capture.requests) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(
    capture: Capture, redis_client: redis.Redis, redis_prefix: str, status: int
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": f"{capture.url}/chat/completions"})

    credentials = ProviderCredentials({"openai": Secret(KEY)}, {"openai": ["127.0.0.1"]})
    async with serve(answer) as port, relay_for(credentials, redis_client, redis_prefix) as relay:
        fmt = catalog_pb2.API_FORMAT_OPENAI_CHAT
        with pytest.raises(UpstreamError) as failed:
            await run(relay, [route("openai", fmt, f"http://127.0.0.1:{port}/v1")])
    assert capture.requests == []  # nothing re-sent to where the redirect pointed
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert failed.value.reason == "UPSTREAM_REDIRECT_REFUSED"
    assert f"HTTP {status}" in failed.value.message and "redirect" in failed.value.message


async def test_a_name_resolving_to_a_refused_address_is_not_connected_to(
    capture: Capture, redis_client: redis.Redis, redis_prefix: str
) -> None:
    # DNS rebinding: a public-looking name that answers 127.0.0.1. (https, so that the URL
    # passes; the reason shows the resolver refused the address before any connection.)
    credentials = ProviderCredentials({}, {})
    fmt = catalog_pb2.API_FORMAT_OPENAI_CHAT
    rebound = route("switchboard", fmt, f"https://rebind.example.com:{capture.port}/v1")
    async with relay_for(
        credentials, redis_client, redis_prefix, STRICT, FixedResolver("127.0.0.1")
    ) as relay:
        with pytest.raises(UpstreamError) as refused:
            await run(relay, [rebound])
    assert capture.requests == []
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "UPSTREAM_ADDRESS_REFUSED"
    assert "127.0.0.1" in refused.value.message and "loopback" in refused.value.message

    # Allow-listed by name, the same name is connected to (over http, which the list allows).
    allowed = UpstreamPolicy(["rebind.example.com"])
    plain = route("switchboard", fmt, f"http://rebind.example.com:{capture.port}/v1")
    async with relay_for(
        credentials, redis_client, redis_prefix, allowed, FixedResolver("127.0.0.1")
    ) as relay:
        with pytest.raises(UpstreamError) as failed:
            await run(relay, [plain])
    assert failed.value.reason == "UPSTREAM_UNAVAILABLE"  # the capture server's 503
    assert len(capture.requests) == 1 and capture.requests[0]["host"].startswith("rebind.")


async def test_a_refused_address_falls_back_to_the_next_endpoint(
    capture: Capture, redis_client: redis.Redis, redis_prefix: str
) -> None:
    fmt = catalog_pb2.API_FORMAT_OPENAI_CHAT
    routes = [
        route("switchboard", fmt, f"https://evil.example.com:{capture.port}/evil"),
        route("ollama", fmt, f"http://good.example.com:{capture.port}/good"),
    ]
    policy = UpstreamPolicy(["good.example.com"])
    async with relay_for(
        ProviderCredentials({}), redis_client, redis_prefix, policy, FixedResolver()
    ) as relay:
        with pytest.raises(UpstreamError) as failed:
            await run(relay, routes)
    assert [r["path"] for r in capture.requests] == ["/good/chat/completions"]
    assert failed.value.reason == "UPSTREAM_UNAVAILABLE"


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",  # aiohttp skips the resolver for IP literals: checked before connecting
        "127.1",
        "2130706433",
        "0x7f000001",
        "[::ffff:127.0.0.1]",
        FULLWIDTH_LOOPBACK,
    ],
)
async def test_ip_literal_hosts_are_checked_before_connecting(
    capture: Capture, redis_client: redis.Redis, redis_prefix: str, host: str
) -> None:
    fmt = catalog_pb2.API_FORMAT_OPENAI_CHAT
    target = route("switchboard", fmt, f"http://{host}:{capture.port}/v1")
    async with relay_for(ProviderCredentials({}), redis_client, redis_prefix, STRICT) as relay:
        with pytest.raises(UpstreamError) as refused:
            await run(relay, [target])
    assert refused.value.reason == "UPSTREAM_ADDRESS_REFUSED"
    assert capture.requests == []


async def test_the_session_refuses_by_itself_whoever_calls_it(capture: Capture) -> None:
    async with create_session(STRICT) as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.post(capture.url + "/chat/completions", data=b"{}")
    assert capture.requests == []


async def test_the_resolver_keeps_only_allowed_addresses() -> None:
    mixed = PolicyResolver(STRICT, FixedResolver("127.0.0.1", "93.184.215.14", "10.0.0.1"))
    kept = await mixed.resolve("api.example.com", 443)
    assert [r["host"] for r in kept] == ["93.184.215.14"]

    refused = PolicyResolver(STRICT, FixedResolver("169.254.169.254", "fd00:ec2::254"))
    with pytest.raises(AddressRefused, match="cloud metadata"):
        await refused.resolve("api.example.com", 443)

    listed = PolicyResolver(UpstreamPolicy(["vllm"]), FixedResolver("172.18.0.5"))
    assert [r["host"] for r in await listed.resolve("vllm", 8000)] == ["172.18.0.5"]


BAD_BASE_URLS = [
    "http://127.0.0.1:9/v1",
    "https://127.0.0.1/v1",
    "https://localhost/v1",
    "https://169.254.169.254/latest",
    "http://metadata.google.internal/computeMetadata/v1",
    "https://[fd00:ec2::254]/latest",
    "https://2130706433/v1",
    "https://0x7f000001/v1",
    "https://0x7f.1/v1",
    "https://0177.0.0.1/v1",
    "https://127.1/v1",
    "https://user:pass@api.openai.com/v1",
    "https://api.openai.com./v1",
    "https://[::ffff:127.0.0.1]/v1",
    "https://10.0.0.1/v1",
    "http://api.openai.com/v1",
]


def provider(base_url: str) -> catalog_pb2.Provider:
    return catalog_pb2.Provider(
        id="openai",
        display_name="OpenAI",
        api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
        base_url=base_url,
    )


@pytest.mark.parametrize("base_url", BAD_BASE_URLS)
def test_the_catalog_refuses_every_bad_base_url(base_url: str) -> None:
    violations = validate.provider_violations(provider(base_url), "provider", policy=STRICT)
    assert [path for path, _ in violations] == ["provider.base_url"]


async def test_upsert_provider_refuses_with_the_field_and_how_to_allow_it() -> None:
    service = CatalogService(
        cast(CatalogStore, None), cast(CatalogBroadcaster, None), UpstreamPolicy()
    )
    request = catalog_pb2.UpsertProviderRequest(provider=provider("http://127.0.0.1:9/v1"))
    with pytest.raises(InvalidArgument) as refused:
        await service.UpsertProvider(request, cast(Context, None))
    [(path, why)] = refused.value.violations
    assert path == "provider.base_url"
    assert "loopback" in why and "SWITCHBOARD_UPSTREAM_ALLOWLIST" in why


def test_the_seed_loads_the_demo_only_with_its_host_allowed() -> None:
    text = packaged_seed_path().read_text(encoding="utf-8")
    with pytest.raises(SeedError) as refused:
        parse_seed(text, source="seed.json", policy=STRICT)
    message = str(refused.value)
    assert "(switchboard): providers[9].base_url" in message
    assert "SWITCHBOARD_UPSTREAM_ALLOWLIST" in message
    parse_seed(text, source="seed.json", policy=UpstreamPolicy(["127.0.0.1"]))

    raw = json.loads(text)
    raw["providers"][0]["base_url"] = "http://169.254.169.254/latest"
    with pytest.raises(SeedError) as refused:
        parse_seed(json.dumps(raw), source="seed.json", policy=UpstreamPolicy(["127.0.0.1"]))
    assert "providers[0] (openai): providers[0].base_url" in str(refused.value)

    demo_elsewhere = "http://10.1.2.3:8088/v1"
    with pytest.raises(SeedError) as refused:
        parse_seed(
            text, source="s", policy=UpstreamPolicy(["127.0.0.1"]), demo_base_url=demo_elsewhere
        )
    assert "SWITCHBOARD_DEMO_BASE_URL" in str(refused.value)
