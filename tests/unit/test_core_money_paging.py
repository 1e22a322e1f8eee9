"""Shared money parsing and page tokens refuse what they must."""

from __future__ import annotations

from decimal import Decimal

import pytest

from switchboard_core.errors import InvalidArgument
from switchboard_core.money import MoneyFormatError, format_usd, parse_usd
from switchboard_core.paging import decode_token, encode_token
from switchboard_core.pricing import Counts, PriceSheet


@pytest.mark.parametrize(
    "text", ["1\n", "١٢", "-1", "1e-3", "1.", ".5", "", "NaN", "1.0000000000001"]
)
def test_parse_usd_refuses_anything_but_plain_decimals(text: str) -> None:
    with pytest.raises(MoneyFormatError):
        parse_usd(text)


def test_parse_and_format_are_exact() -> None:
    assert parse_usd("0.000000000001") == Decimal("1E-12")
    assert format_usd(Decimal("1.50")) == "1.5"
    assert format_usd(Decimal("0E-12")) == "0"
    assert format_usd(Decimal("1E-12")) == "0.000000000001"


def test_cost_splits_cached_and_cache_write_tokens() -> None:
    price = PriceSheet.flat("3", "15", cached_prompt="0.3", cache_write="3.75")
    # 1000 prompt = 600 fresh + 300 cached + 100 written; 200 completion
    cost = price.cost(Counts(1000, 200, cached_tokens=300, cache_write_tokens=100))
    assert (
        cost == (600 * Decimal(3) + 300 * Decimal("0.3") + 100 * Decimal("3.75") + 200 * 15) / 10**6
    )
    assert format_usd(cost) == "0.005265"


def test_page_tokens_round_trip_and_garbage_is_refused() -> None:
    assert decode_token(encode_token("openai/gpt-4o")) == "openai/gpt-4o"
    assert decode_token("") == ""
    with pytest.raises(InvalidArgument) as caught:
        decode_token("%%%")
    assert caught.value.violations[0][0] == "page_token"


@pytest.mark.parametrize("key", ["\x00", "openai/gpt-4o\x00", "2024-01-01T00:00:00+00:00|\x00"])
def test_a_page_token_holding_a_nul_character_is_refused(key: str) -> None:
    """Postgres cannot compare with a NUL character: the query failed, and the List RPC
    answered INTERNAL (found by tests/e2e/test_fuzz.py with page_token "AA==")."""
    with pytest.raises(InvalidArgument) as caught:
        decode_token(encode_token(key))
    assert caught.value.violations[0][0] == "page_token"
