"""Tenants see only themselves, through the public port: two accounts, the real processes.

An end user reads their own key, generations, usage and the model list with their own API key
on the router's port. Another account's generation, key, usage or balance answers exactly what
an unknown id answers (code, message and ErrorInfo), through the router and through metering
itself when the router forwards the key; nobody but the router may forward one. An API key
calls no admin RPC on any port. Keys' expiry and allow-lists hold end to end.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.rpc_owners import FORWARDED_AUTHORIZATION
from switchboard_devstack.pki import OPERATOR
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth, ledger_entry
from tests.fakes.cli_servers import cli

pytestmark = [pytest.mark.e2e]

# A long key cache: an expired key must be refused because the cache never outlives a key's
# expiry, not because the cache happened to be short.
STACK_ENV = {"SWITCHBOARD_KEY_CACHE_SECONDS": "60"}
DEMO = "switchboard/demo"
Key = metering_pb2.CreateApiKeyResponse


@dataclass(frozen=True)
class Refusal:
    """What a caller learns from an error: code, message (the asked id masked) and ErrorInfo."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]


def refusal(error: grpc.aio.AioRpcError, asked: str = "") -> Refusal:
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    infos = [d for d in (status.details if status is not None else ()) if d.Unpack(info)]
    assert len(infos) == 1, "exactly one ErrorInfo"
    message = error.details() or ""
    masked = {k: v.replace(asked, "<id>") if asked else v for k, v in info.metadata.items()}
    return Refusal(
        error.code(),
        message.replace(asked, "<id>") if asked else message,
        info.reason,
        info.domain,
        masked,
    )


async def refused(call: Awaitable[object], asked: str = "") -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return refusal(raised.value, asked)


def ask(model: str = DEMO, *fallbacks: str) -> router_pb2.CreateCompletionRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hello")
    return router_pb2.CreateCompletionRequest(
        model=model, messages=[message], max_tokens=8, fallback_models=list(fallbacks)
    )


def forwarded(key: Key) -> tuple[tuple[str, str]]:
    return ((FORWARDED_AUTHORIZATION, f"Bearer {key.secret}"),)


@dataclass
class Tenants:
    a: Key
    a_sibling: Key  # another key of account A
    b: Key
    generation_a: str
    generation_b: str


async def new_key(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    account_id: str,
    *,
    expire_time: timestamp_pb2.Timestamp | None = None,
    allowed_models: Sequence[str] = (),
    allowed_providers: Sequence[str] = (),
) -> Key:
    request = metering_pb2.CreateApiKeyRequest(
        account_id=account_id,
        name="tenant",
        expire_time=expire_time,
        allowed_models=allowed_models,
        allowed_providers=allowed_providers,
    )
    return await metering.CreateApiKey(request)


@pytest.fixture(scope="module")
async def tenants(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    router: router_pb2_grpc.RouterServiceAsyncStub,
) -> Tenants:
    suffix = uuid.uuid4().hex[:8]
    a = await new_key(metering, f"tenant-a-{suffix}")
    a_sibling = await new_key(metering, f"tenant-a-{suffix}")
    b = await new_key(metering, f"tenant-b-{suffix}")
    generation_a = (await router.CreateCompletion(ask(), metadata=auth(a))).generation_id
    generation_b = (await router.CreateCompletion(ask(), metadata=auth(b))).generation_id
    await ledger_entry(metering, generation_a)
    await ledger_entry(metering, generation_b)
    return Tenants(a, a_sibling, b, generation_a, generation_b)


@pytest.fixture(scope="module")
async def as_router(stack: Stack) -> AsyncIterator[metering_pb2_grpc.MeteringServiceAsyncStub]:
    """Metering, called with the router's certificate (as the router forwards keys)."""
    async with stack.channel("metering", bearer="", as_="router") as channel:
        yield metering_pb2_grpc.MeteringServiceStub(channel)


async def test_a_tenant_reads_its_own_key_generations_usage_and_balance(
    router: router_pb2_grpc.RouterServiceAsyncStub, tenants: Tenants
) -> None:
    a = tenants.a
    key = await router.GetKey(account_pb2.GetKeyRequest(), metadata=auth(a))
    assert key.api_key.id == a.api_key.id
    assert key.api_key.account_id == a.api_key.account_id
    assert key.api_key.prefix == a.api_key.prefix and a.secret not in str(key)
    assert key.spend.key_id == a.api_key.id and key.account.account_id == a.api_key.account_id

    generation = await router.GetGeneration(
        account_pb2.GetGenerationRequest(generation_id=tenants.generation_a), metadata=auth(a)
    )
    assert generation.generation.key_id == a.api_key.id

    usage = await router.QueryUsage(account_pb2.QueryUsageRequest(), metadata=auth(a))
    assert usage.total_requests >= 1
    account = await router.QueryUsage(
        account_pb2.QueryUsageRequest(scope=account_pb2.USAGE_SCOPE_ACCOUNT), metadata=auth(a)
    )
    assert account.total_requests >= usage.total_requests


async def test_another_accounts_generation_is_not_found_exactly_like_an_unknown_id(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    as_router: metering_pb2_grpc.MeteringServiceAsyncStub,
    tenants: Tenants,
) -> None:
    unknown = f"gen-{uuid.uuid4().hex}"
    for asked in (tenants.generation_b, unknown):
        through_router = await refused(
            router.GetGeneration(
                account_pb2.GetGenerationRequest(generation_id=asked), metadata=auth(tenants.a)
            ),
            asked,
        )
        in_metering = await refused(
            as_router.GetGeneration(
                metering_pb2.GetGenerationRequest(generation_id=asked),
                metadata=forwarded(tenants.a),
            ),
            asked,
        )
        assert through_router == in_metering
        assert through_router.code == grpc.StatusCode.NOT_FOUND
        assert through_router.message == "generation '<id>' not found"
    # B reads its own.
    await router.GetGeneration(
        account_pb2.GetGenerationRequest(generation_id=tenants.generation_b),
        metadata=auth(tenants.b),
    )


async def like_unknown(ask_for: Callable[[str], Awaitable[object]], other: str) -> None:
    """Asking for ``other`` fails exactly as asking for an id nobody has."""
    nobody = other[:4] + secrets.token_hex(8)
    foreign = await refused(ask_for(other), other)
    unknown = await refused(ask_for(nobody), nobody)
    assert foreign == unknown
    assert foreign.code == grpc.StatusCode.NOT_FOUND


async def test_metering_scopes_a_forwarded_key_to_its_own_account(
    as_router: metering_pb2_grpc.MeteringServiceAsyncStub, tenants: Tenants
) -> None:
    """Another account's key and the account itself are NOT_FOUND, as unknown ones are;
    the key's own account, and its other keys, are readable."""
    a = forwarded(tenants.a)
    b = tenants.b.api_key
    await like_unknown(
        lambda key_id: as_router.GetApiKey(
            metering_pb2.GetApiKeyRequest(key_id=key_id), metadata=a
        ),
        b.id,
    )
    for field, other in [("key_id", b.id), ("account_id", b.account_id)]:
        await like_unknown(
            lambda value, f=field: as_router.QueryUsage(  # type: ignore[misc]
                metering_pb2.QueryUsageRequest(**{f: value}), metadata=a
            ),
            other,
        )
        await like_unknown(
            lambda value, f=field: as_router.GetBalance(  # type: ignore[misc]
                metering_pb2.GetBalanceRequest(**{f: value}), metadata=a
            ),
            other,
        )

    sibling = tenants.a_sibling.api_key
    own = await as_router.GetApiKey(metering_pb2.GetApiKeyRequest(key_id=sibling.id), metadata=a)
    assert own.api_key.account_id == tenants.a.api_key.account_id
    await as_router.GetBalance(
        metering_pb2.GetBalanceRequest(account_id=sibling.account_id), metadata=a
    )
    await as_router.QueryUsage(metering_pb2.QueryUsageRequest(key_id=sibling.id), metadata=a)


async def test_nobody_but_the_router_may_forward_a_key(stack: Stack, tenants: Tenants) -> None:
    request = metering_pb2.GetGenerationRequest(generation_id=tenants.generation_a)
    for identity in (OPERATOR, "catalog", "metering"):
        async with stack.channel("metering", bearer="", as_=identity) as channel:
            stub = metering_pb2_grpc.MeteringServiceStub(channel)
            outcome = await refused(stub.GetGeneration(request, metadata=forwarded(tenants.a)))
            assert outcome.code in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), identity


NO_SPEND = metering_pb2.SpendLimits(total_usd="0")
ONE_RPM = metering_pb2.RateLimits(requests_per_minute=1)
ADMIN_CALLS: list[tuple[str, Message]] = [
    ("SetKeyLimits", metering_pb2.SetKeyLimitsRequest(limits=NO_SPEND)),
    ("SetAccountLimits", metering_pb2.SetAccountLimitsRequest(rate_limits=ONE_RPM)),
    ("RevokeApiKey", metering_pb2.RevokeApiKeyRequest()),
    ("AddCredits", metering_pb2.AddCreditsRequest(amount_usd="1000")),
    ("CreateApiKey", metering_pb2.CreateApiKeyRequest(name="escalated")),
    ("RecordUsage", metering_pb2.RecordUsageRequest()),
]  # fmt: skip


async def test_an_api_key_calls_no_admin_rpc_on_any_port(
    stack: Stack,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    tenants: Tenants,
) -> None:
    b = tenants.b.api_key
    targets = {
        "SetKeyLimits": {"key_id": b.id},
        "SetAccountLimits": {"account_id": b.account_id},
        "RevokeApiKey": {"key_id": b.id},
        "AddCredits": {"account_id": tenants.a.api_key.account_id},
        "CreateApiKey": {"account_id": b.account_id},
    }
    path = "/switchboard.metering.v1.MeteringService/"
    for server in ("router", "catalog", "metering"):
        async with stack.channel(server, bearer=tenants.a.secret) as channel:
            for name, template in ADMIN_CALLS:
                request = type(template)()
                request.CopyFrom(template)
                for field, value in targets.get(name, {}).items():
                    setattr(request, field, value)
                call = channel.unary_unary(
                    path + name,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=lambda data: data,
                )
                with pytest.raises(grpc.aio.AioRpcError) as outcome:
                    await call(request, timeout=10)
                assert outcome.value.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNIMPLEMENTED,  # the router does not serve metering's RPCs
                ), (server, name, outcome.value.details())
    # Nothing changed: B's key still works, without limits; A's account got no credit.
    balance = await metering.GetBalance(metering_pb2.GetBalanceRequest(key_id=b.id))
    assert not balance.key.limits.total_usd and not balance.account.prepaid
    unlimited = await metering.GetApiKey(metering_pb2.GetApiKeyRequest(key_id=b.id))
    assert not unlimited.api_key.HasField("account_rate_limits")
    await router.CreateCompletion(ask(), metadata=auth(tenants.b))
    mine = await router.GetKey(account_pb2.GetKeyRequest(), metadata=auth(tenants.a))
    assert not mine.account.prepaid


async def test_an_expired_key_is_refused_though_the_router_cached_it(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    expiry = timestamp_pb2.Timestamp()
    expiry.FromMicroseconds(int((time.time() + 2.0) * 1e6))  # Postgres keeps microseconds
    key = await new_key(metering, f"expiring-{uuid.uuid4().hex[:8]}", expire_time=expiry)
    assert key.api_key.expire_time == expiry
    await router.CreateCompletion(ask(), metadata=auth(key))  # cached for up to 60 s...
    await asyncio.sleep(max(0.0, expiry.ToNanoseconds() / 1e9 - time.time()) + 0.2)
    for call in (
        router.CreateCompletion(ask(), metadata=auth(key)),  # ...but not past its expiry
        router.GetKey(account_pb2.GetKeyRequest(), metadata=auth(key)),
    ):
        outcome = await refused(call)
        assert (outcome.code, outcome.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_EXPIRED",
        )


async def test_a_model_allow_list_refuses_other_models_naming_the_rule_and_the_field(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    key = await new_key(metering, f"models-{uuid.uuid4().hex[:8]}", allowed_models=[DEMO])
    assert list(key.api_key.allowed_models) == [DEMO]
    await router.CreateCompletion(ask(DEMO + ":floor"), metadata=auth(key))
    for request, field in [
        (ask("openai/gpt-4o-mini"), "model"),
        (ask(DEMO, DEMO, "openai/gpt-4o-mini"), "fallback_models[1]"),
    ]:
        outcome = await refused(router.CreateCompletion(request, metadata=auth(key)))
        assert outcome.code == grpc.StatusCode.PERMISSION_DENIED
        assert outcome.reason == "MODEL_NOT_ALLOWED"
        assert outcome.metadata == {
            "field": field,
            "model": "openai/gpt-4o-mini",
            "rule": "allowed_models",
        }
    listed = await router.ListModels(account_pb2.ListModelsRequest(), metadata=auth(key))
    assert [model.id for model in listed.models] == [DEMO]


async def test_a_provider_allow_list_filters_the_routes(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    account = f"providers-{uuid.uuid4().hex[:8]}"
    demo_only = await new_key(metering, account, allowed_providers=["switchboard"])
    reply = await router.CreateCompletion(ask(), metadata=auth(demo_only))
    assert reply.provider == "switchboard"

    elsewhere = await new_key(metering, account, allowed_providers=["openai"])
    outcome = await refused(router.CreateCompletion(ask(), metadata=auth(elsewhere)))
    assert (outcome.code, outcome.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PROVIDER_NOT_ALLOWED",
    )
    assert outcome.metadata["rule"] == "allowed_providers"

    # Llama 3.3 70B is served by together and deepinfra (its groq and fireworks endpoints are
    # retired); the stack's router has a credential for neither. A key allowed those two
    # never reaches a keyed provider: the request fails on those two alone.
    hosts = await new_key(metering, account, allowed_providers=["together", "deepinfra"])
    outcome = await refused(
        router.CreateCompletion(ask("meta-llama/llama-3.3-70b-instruct"), metadata=auth(hosts))
    )
    assert (outcome.code, outcome.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_NOT_CONFIGURED",
    )
    assert outcome.metadata["providers"] == "deepinfra,together"
    listed = await router.ListModels(account_pb2.ListModelsRequest(), metadata=auth(hosts))
    providers = {e.provider_id for model in listed.models for e in model.endpoints}
    assert providers == {"together", "deepinfra"}
    assert DEMO not in {model.id for model in listed.models}


async def test_the_model_list_needs_only_an_api_key_and_pages(
    router: router_pb2_grpc.RouterServiceAsyncStub, tenants: Tenants
) -> None:
    seen: list[catalog_pb2.Model] = []
    token = ""
    while True:
        page = await router.ListModels(
            account_pb2.ListModelsRequest(page_size=4, page_token=token), metadata=auth(tenants.a)
        )
        assert len(page.models) <= 4
        seen.extend(page.models)
        token = page.next_page_token
        if not token:
            break
    ids = [model.id for model in seen]
    assert ids == sorted(set(ids)) and DEMO in ids
    together = await router.ListModels(
        account_pb2.ListModelsRequest(provider_id="together"), metadata=auth(tenants.a)
    )
    assert together.models and all(
        any(e.provider_id == "together" for e in model.endpoints) for model in together.models
    )


async def test_the_cli_shows_the_callers_own_key_with_just_the_api_key(
    stack: Stack, tenants: Tenants, capsys: pytest.CaptureFixture[str]
) -> None:
    router = ["--router", stack.address("router"), "--api-key", tenants.a.secret]
    assert await cli(*router, "key") == 0
    assert tenants.a.api_key.id in capsys.readouterr().out
    assert await cli(*router, "generation", tenants.generation_a) == 0
    assert tenants.generation_a in capsys.readouterr().out
    assert await cli(*router, "generation", tenants.generation_b) == 1
    assert "not found" in capsys.readouterr().err
    assert await cli(*router, "usage") == 0
    assert await cli(*router, "models", "list") == 0
    assert DEMO in capsys.readouterr().out
