"""Every Lua script Switchboard runs names its keys only through ``KEYS``: Redis Cluster
routes a script by its declared keys and refuses keys of another slot, so a key name built in
Lua (``prefix .. 'res:' .. id``) works on one Redis and breaks on a cluster."""

from __future__ import annotations

import re

import pytest

from switchboard_core import budget_scripts, liveness, rate_limit_scripts
from switchboard_router import stats_store

SCRIPTS = {
    "budget.RESERVE": budget_scripts.RESERVE,
    "budget.SETTLE": budget_scripts.SETTLE,
    "budget.LOAD": budget_scripts.LOAD,
    "budget.ADD_CREDIT": budget_scripts.ADD_CREDIT,
    "budget.RAISE": budget_scripts.RAISE,
    "rate_limits.ADMIT": rate_limit_scripts.ADMIT,
    "rate_limits.FINISH": rate_limit_scripts.FINISH,
    "rate_limits.RENEW": rate_limit_scripts.RENEW,
    "liveness.RECORD": liveness._RECORD,
    "liveness.FINISH": liveness._FINISH,
    "liveness.LEAVE": liveness._LEAVE,
    "liveness.PUBLISH": liveness._PUBLISH,
    "stats_store.OPEN": stats_store.OPEN_SCRIPT,
    "stats_store.CLOSE": stats_store.CLOSE_SCRIPT,
}
NO_KEYS = {"TIME"}
ALL_KEYS = {"DEL", "EXISTS", "UNLINK"}  # every argument is a key
KEY = re.compile(r"KEYS\[[^\[\]]+\]")
FUNCTION = re.compile(r"local function (\w+)\(([^)]*)\)")


def _arguments(text: str, open_at: int) -> list[str]:
    """The top-level arguments of the call whose ``(`` is at ``open_at``."""
    depth, quote, start, found = 0, "", open_at + 1, []
    for i in range(open_at, len(text)):
        c = text[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                found.append(text[start:i].strip())
                return found
        elif c == "," and depth == 1:
            found.append(text[start:i].strip())
            start = i + 1
    raise AssertionError("unbalanced call")


def _calls(text: str, name: str) -> list[list[str]]:
    return [
        _arguments(text, m.end() - 1)
        for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\(", text)
        if not text[: m.start()].endswith("function ")
    ]


def key_problems(script: str) -> list[str]:
    """Each key argument of a ``redis.call`` that is not ``KEYS[...]``, nor a parameter of a
    local function every call of which passes ``KEYS[...]`` there."""
    params = {name: [p.strip() for p in ps.split(",")] for name, ps in FUNCTION.findall(script)}
    problems = []
    for args in _calls(script, "redis.call"):
        command = args[0].strip("'\"").upper()
        keys = [] if command in NO_KEYS else args[1:] if command in ALL_KEYS else args[1:2]
        for key in keys:
            if KEY.fullmatch(key):
                continue
            owners = [(f, ps.index(key)) for f, ps in params.items() if key in ps]
            passed = [call[i] for f, i in owners for call in _calls(script, f) if len(call) > i]
            if not owners or not passed or not all(KEY.fullmatch(a) for a in passed):
                problems.append(f"{command} {key}")
    return problems


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_key_a_script_touches_comes_from_KEYS(name: str) -> None:
    assert key_problems(SCRIPTS[name]) == []


def test_the_check_finds_a_key_name_built_in_lua() -> None:
    built = """
local function release(acct, rec) redis.call('HINCRBY', acct, 'reserved', 1) end
redis.call('GET', ARGV[1] .. 'res:' .. ARGV[2])
redis.call('DEL', KEYS[1], 'held:' .. ARGV[3])
release(ARGV[1] .. 'acct', 1)
release(KEYS[2], 1)
"""
    assert key_problems(built) == [
        "HINCRBY acct",
        "GET ARGV[1] .. 'res:' .. ARGV[2]",
        "DEL 'held:' .. ARGV[3]",
    ]
