"""Every adapter names its parameters by the canonical names (``canonical.PARAMETER_FIELDS``).

The relay unsets a request's parameters that the adapter does not list: a misspelt name in an
adapter's set would not fail anywhere, it would silently drop that parameter from every request
sent to the provider."""

from __future__ import annotations

import aiohttp
import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard_router.canonical import PARAMETER_FIELDS
from switchboard_router.providers.openai_dialects import DIALECTS
from switchboard_router.providers.registry import build_adapters

CANONICAL = frozenset(PARAMETER_FIELDS)
# Every dialect the OpenAI adapter knows, the default ("") and one it does not know.
DIALECT_NAMES = sorted({*DIALECTS, "", "some-new-host"})
FORMAT_NAMES: dict[int, str] = {int(value): name for name, value in catalog_pb2.ApiFormat.items()}


async def test_every_adapters_parameters_are_canonical_names() -> None:
    async with aiohttp.ClientSession() as session:
        adapters = build_adapters(session)
    assert set(adapters) == {
        value
        for value in catalog_pb2.ApiFormat.values()
        if value != catalog_pb2.API_FORMAT_UNSPECIFIED
    }, "a wire format without an adapter (or an adapter for none)"
    unknown = {
        (FORMAT_NAMES[api_format], dialect): sorted(names - CANONICAL)
        for api_format, adapter in adapters.items()
        for dialect in DIALECT_NAMES
        if (names := adapter.parameters(dialect)) - CANONICAL
    }
    assert not unknown, f"parameter names that are not canonical: {unknown}"


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
async def test_every_dialect_translates_the_basics(dialect: str) -> None:
    """A floor under the subset check: a set emptied by mistake would pass it."""
    async with aiohttp.ClientSession() as session:
        adapters = build_adapters(session)
    for adapter in adapters.values():
        assert {"max_tokens", "temperature", "stop"} <= adapter.parameters(dialect), dialect
