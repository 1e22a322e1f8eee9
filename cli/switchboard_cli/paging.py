"""Walking every page of a List call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from switchboard_cli.errors import CliError

T = TypeVar("T")

PAGE_SIZE = 200


async def collect(fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]]) -> list[T]:
    """Call ``fetch(page_token)`` until the next token is empty and return every item."""
    items: list[T] = []
    token = ""
    seen: set[str] = set()
    while True:
        page, token = await fetch(token)
        items.extend(page)
        if not token:
            return items
        if token in seen:
            raise CliError(f"the server returned page token {token!r} twice; stopping")
        seen.add(token)
