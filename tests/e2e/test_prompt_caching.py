"""Prompt caching through the real router: a Claude request whose system prompt is marked
(OpenRouter's ``cache_control`` on a content part) writes the cache, a repeat reads it, and the
response usage, the cost and the ledger say so.

The seeded Anthropic provider is pointed at the fake Anthropic server, which keeps Anthropic's
prompt cache (``Script.prompt_cache``; a block's tokens are its words).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from tests.e2e.support import auth, ledger_entry, stream_to_fake
from tests.fakes import anthropic_server
from tests.fakes.script import FakeProvider, Script, ScriptUsage

pytestmark = [pytest.mark.e2e]

CLAUDE = "anthropic/claude-haiku-4.5"
RULES = "rule " * 2000  # 2000 tokens at the fake


@pytest.fixture(scope="module")
async def claude(catalog: catalog_pb2_grpc.CatalogServiceAsyncStub) -> AsyncIterator[FakeProvider]:
    script = Script(text=("Done.",), usage=ScriptUsage(0, 3), prompt_cache=True)
    async with anthropic_server.serve(script) as fake:
        providers = await catalog.ListProviders(catalog_pb2.ListProvidersRequest())
        (provider,) = [p for p in providers.providers if p.id == "anthropic"]
        provider.base_url = fake.base_url
        await catalog.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
        yield fake


def ask(question: str) -> router_pb2.StreamCompletionRequest:
    mark = common_pb2.CacheControl(ttl=common_pb2.CacheControl.TTL_1H)
    system = common_pb2.ChatMessage(
        role=common_pb2.ROLE_SYSTEM,
        parts=[common_pb2.ContentPart(text=RULES, cache_control=mark)],
    )
    user = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=question)
    return router_pb2.StreamCompletionRequest(model=CLAUDE, messages=[system, user])


async def test_a_marked_system_prompt_is_written_then_read_and_billed_so(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    claude: FakeProvider,
) -> None:
    first = (await stream_to_fake(router, api_key, ask("Summarise the rules."), claude))[-1].end
    sent = claude.requests[-1].body
    assert sent["system"] == [
        {"type": "text", "text": RULES, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    assert (first.usage.prompt_tokens, first.usage.cache_write_tokens) == (2003, 2000)
    assert (first.usage.cached_tokens, first.usage.cache_write_1h_tokens) == (0, 2000)

    second_messages = await stream_to_fake(router, api_key, ask("Which rule is first?"), claude)
    second = second_messages[-1].end
    assert (second.usage.prompt_tokens, second.usage.cached_tokens) == (2004, 2000)
    assert second.usage.cache_write_tokens == 0
    # The seeded Claude price reads the cache for less than it writes it.
    assert Decimal(second.cost_usd) < Decimal(first.cost_usd)

    row = await ledger_entry(metering, second_messages[0].start.generation_id)
    assert (row.usage.cached_tokens, row.usage.cache_write_tokens) == (2000, 0)
    assert row.cost_usd == second.cost_usd


async def test_marks_that_break_anthropics_rules_are_refused_before_they_leave(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    claude: FakeProvider,
) -> None:
    request = ask("hi")
    late = request.messages[1]
    late.ClearField("content")
    late.parts.add(
        text="a document", cache_control=common_pb2.CacheControl(ttl=common_pb2.CacheControl.TTL_1H)
    )
    request.messages[0].parts[0].cache_control.ttl = common_pb2.CacheControl.TTL_5M
    before = len(claude.requests)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _ = [m async for m in router.StreamCompletion(request, metadata=auth(api_key))]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1h mark must come before every 5m mark" in (refused.value.details() or "")
    assert len(claude.requests) == before
