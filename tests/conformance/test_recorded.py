"""Streams the providers really sent, replayed through the adapters three ways (see
:mod:`tests.conformance.replay`); ``recorded/<format>/SOURCES.md`` says where each came from."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.providers.http import create_session
from tests.conformance.replay import (
    FORMATS,
    RECORDED,
    WAYS,
    Fixture,
    load_fixtures,
    pieces,
    replay,
)

FIXTURES = load_fixtures()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as http:
        yield http


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.id for f in FIXTURES])
async def test_a_recorded_stream_gives_its_canonical_result_every_way_it_is_read(
    fixture: Fixture, session: aiohttp.ClientSession
) -> None:
    expected = fixture.expected
    contains = (fixture.meta["expect"].get("error") or {}).get("message_contains", "")
    for way in WAYS:
        got, message = await replay(fixture, way, session)
        assert got == expected, f"read {way}"
        assert contains in message, f"read {way}: {message!r}"


def test_every_fixture_names_its_source_and_its_format() -> None:
    assert FIXTURES, "no recorded fixtures found"
    for fixture in FIXTURES:
        assert fixture.format in FORMATS, fixture.id
        assert fixture.meta.get("source", "").strip(), f"{fixture.id} has no source"
        assert "expect" in fixture.meta, f"{fixture.id} has no expect"
        sources = RECORDED / fixture.format / "SOURCES.md"
        assert sources.exists(), f"{sources} is missing"
        assert fixture.name in sources.read_text(), f"{fixture.id} is not in {sources}"


@pytest.mark.parametrize("way", WAYS)
def test_the_pieces_join_back_to_the_body(way: str) -> None:
    body = 'data: {"t": "caf\u00e9 \u6771\u4eac \U0001f680"}\r\n\r\ndata: [DONE]\r\n\r\n'.encode()
    cut = pieces(body, way)
    assert b"".join(cut) == body
    if way == "tiny":
        assert max(len(p) for p in cut) <= 11
        # Cut inside the multi-byte characters and between CR and LF.
        assert any(p.endswith(b"\r") for p in cut)
        assert any(p and 0x80 <= p[0] < 0xC0 for p in cut)
