"""Keys hashed with the usage stream (Redis Cluster's hash tags, as Redis computes them)."""

from __future__ import annotations

import pytest

from switchboard_core.usage_outbox import colocated, hash_tag, stream_problem


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("switchboard:usage", "switchboard:usage"),  # no tag: the whole name
        ("{sb}:usage", "sb"),
        ("a{b}c{d}", "b"),  # the first tag
        ("a{}b{c}", "a{}b{c}"),  # an empty first tag: the whole name
        ("a{b", "a{b"),
    ],
)
def test_hash_tags(key: str, tag: str) -> None:
    assert hash_tag(key) == tag


def test_colocated_keys_hash_as_the_stream_does() -> None:
    for stream in ("switchboard:usage", "{sb}:usage"):
        assert hash_tag(colocated(stream, ":gen:router-1")) == hash_tag(stream)
    assert stream_problem("switchboard:usage") is None
    assert stream_problem("{sb}:usage") is None
    assert stream_problem("a}b") is not None and stream_problem("") is not None
