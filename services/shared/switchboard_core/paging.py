"""Opaque page tokens for List RPCs (AIP-158): the last key seen, base64-encoded."""

from __future__ import annotations

import base64
import binascii

from switchboard_core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument({"page_size": "must not be negative"})
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode()


def decode_token(token: str) -> str:
    """The key a token holds. One that holds a NUL character was never made by
    :func:`encode_token` (no key has one, and Postgres could not compare with it)."""
    if not token:
        return ""
    try:
        key = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad_token() from None
    if "\x00" in key:
        raise _bad_token()
    return key


def _bad_token() -> InvalidArgument:
    return InvalidArgument({"page_token": "not a token from a previous response"})
