"""Paging a fake provider's model list the way the providers page theirs: a page of at most
``size`` ids after a cursor (Anthropic's ``after_id``, Gemini's opaque ``pageToken``, which
the fakes make the last id of the previous page)."""

from __future__ import annotations

from collections.abc import Sequence

# The models a fake lists unless told otherwise.
DEFAULT_MODELS = ("fake-model-a", "fake-model-b", "fake-model-c")


def page_after(ids: Sequence[str], after: str, size: int) -> tuple[list[str], bool]:
    """Up to ``size`` ids following ``after`` ("" for the first page), and whether more
    follow. An ``after`` not in the list starts nowhere (an empty page), as a stale cursor."""
    start = 0
    if after:
        if after not in ids:
            return [], False
        start = list(ids).index(after) + 1
    page = list(ids[start : start + max(1, size)])
    return page, start + len(page) < len(ids)


def requested_size(value: str | None, default: int, cap: int) -> int:
    """A page size from a query parameter: the provider's default when absent or bad, never
    above the provider's maximum nor the fake's ``cap``."""
    try:
        size = int(value) if value else default
    except ValueError:
        size = default
    return max(1, min(size, cap))
