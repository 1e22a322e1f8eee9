"""Exact money. No floats, ever.

Amounts are :class:`decimal.Decimal` in US dollars inside Python, decimal strings in protos
and ``NUMERIC`` in Postgres. Prices are USD per million tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")
MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


class MoneyFormatError(ValueError):
    pass


def parse_usd(text: str, *, allow_empty: bool = False) -> Decimal:
    """Parse a non-negative decimal string such as ``"0.15"``; rejects exponents and signs."""
    if text == "" and allow_empty:
        return ZERO
    if not _DECIMAL.fullmatch(text):
        raise MoneyFormatError(f"expected a non-negative decimal like '0.15', got {text!r}")
    return Decimal(text)


def format_usd(amount: Decimal) -> str:
    """A decimal string without exponent or trailing zeros: ``Decimal('1.50')`` -> ``"1.5"``."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True, slots=True)
class Price:
    """An endpoint's prices in USD per million tokens."""

    prompt: Decimal
    completion: Decimal
    cached_prompt: Decimal
    cache_write: Decimal

    @classmethod
    def parse(
        cls, prompt: str, completion: str, cached_prompt: str = "", cache_write: str = ""
    ) -> Price:
        p = parse_usd(prompt)
        return cls(
            prompt=p,
            completion=parse_usd(completion),
            cached_prompt=parse_usd(cached_prompt) if cached_prompt else p,
            cache_write=parse_usd(cache_write) if cache_write else p,
        )

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        """Exact cost. ``prompt_tokens`` includes cached and cache-write tokens."""
        cached = min(cached_tokens, prompt_tokens)
        written = min(cache_write_tokens, prompt_tokens - cached)
        fresh = prompt_tokens - cached - written
        micro = (
            fresh * self.prompt
            + cached * self.cached_prompt
            + written * self.cache_write
            + completion_tokens * self.completion
        )
        return micro / MILLION
