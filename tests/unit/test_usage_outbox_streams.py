"""The usage outbox split into streams (switchboard_core.usage_outbox): their names, which
stream a router writes, what metering accepts from the registry, and the router's setting."""

from __future__ import annotations

import collections

import pytest

from switchboard_core.config import ConfigError
from switchboard_core.liveness import new_router_id
from switchboard_core.usage_outbox import (
    MAX_USAGE_STREAMS,
    is_shard_of,
    registry_key,
    stream_for,
    streams_problem,
    usage_streams,
)
from switchboard_router.config import RouterConfig
from tests.secure import tls_env

ROUTER = {
    **tls_env("router"),
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def test_one_stream_is_the_base_stream_and_more_are_numbered_shards() -> None:
    assert usage_streams("switchboard:usage", 1) == ("switchboard:usage",)
    assert usage_streams("switchboard:usage", 3) == (
        "switchboard:usage:0",
        "switchboard:usage:1",
        "switchboard:usage:2",
    )
    assert registry_key("switchboard:usage") == "switchboard:usage:streams"


def test_a_router_writes_one_stream_for_its_life_and_routers_spread_over_all() -> None:
    streams = usage_streams("s", 8)
    ids = [new_router_id() for _ in range(2000)]
    assert [stream_for(i, streams) for i in ids] == [stream_for(i, streams) for i in ids]
    spread = collections.Counter(stream_for(i, streams) for i in ids)
    assert set(spread) == set(streams)
    assert min(spread.values()) > 2000 / 8 / 2  # none starved
    assert {stream_for(i, ("s",)) for i in ids} == {"s"}


def test_the_registry_yields_only_the_bases_shards() -> None:
    base = "switchboard:usage"
    assert is_shard_of(base, "switchboard:usage:0")
    assert is_shard_of(base, f"switchboard:usage:{MAX_USAGE_STREAMS - 1}")
    for other in (
        base,
        f"switchboard:usage:{MAX_USAGE_STREAMS}",  # beyond the bound
        "switchboard:usage:07",  # not how a shard is named
        "switchboard:usage:-1",
        "switchboard:usage:dead",
        "switchboard:usage:streams",
        "switchboard:usage:\u0663",  # a digit, but not an ASCII one
        "switchboard:usage:1:dead",
        "other:usage:1",
        "switchboard:usage:" + "9" * 40,
    ):
        assert not is_shard_of(base, other), other


def test_a_base_with_a_hash_tag_cannot_be_split() -> None:
    assert streams_problem("switchboard:usage", 8) is None
    assert streams_problem("{sb}:usage", 1) is None
    assert "hash tag" in (streams_problem("{sb}:usage", 2) or "")
    # The count's bounds are the setting's (below): EnvReader.int refuses 0 and 65.


def test_the_router_reads_how_many_streams_and_refuses_what_cannot_work() -> None:
    assert RouterConfig.from_env(ROUTER).usage_streams == 1
    assert RouterConfig.from_env({**ROUTER, "SWITCHBOARD_USAGE_STREAMS": "8"}).usage_streams == 8
    for bad, problem in (
        ({"SWITCHBOARD_USAGE_STREAMS": "0"}, "between 1 and 64"),
        ({"SWITCHBOARD_USAGE_STREAMS": "65"}, "between 1 and 64"),
        ({"SWITCHBOARD_USAGE_STREAMS": "eight"}, "expected an integer"),
        ({"SWITCHBOARD_USAGE_STREAMS": "4\x00"}, "SWITCHBOARD_USAGE_STREAMS"),
        (
            {"SWITCHBOARD_USAGE_STREAMS": "4", "SWITCHBOARD_USAGE_STREAM": "{sb}:usage"},
            "hash tag",
        ),
    ):
        with pytest.raises(ConfigError) as caught:
            RouterConfig.from_env({**ROUTER, **bad})
        [message] = [p for p in caught.value.problems if "SWITCHBOARD_USAGE_STREAMS" in p]
        assert problem in message
