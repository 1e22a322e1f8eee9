"""Exact money. No floats, ever.

Amounts are :class:`decimal.Decimal` in US dollars inside Python, decimal strings in protos
and ``NUMERIC`` in Postgres. Prices are USD per million tokens; what a usage costs under an
endpoint's price is :mod:`switchboard_core.pricing`'s to say.
"""

from __future__ import annotations

import re
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
