"""The last-known-good key cache: stale answers while metering is unreachable, targeted
eviction by key and by account, re-verification after the change listener reconnects."""

from __future__ import annotations

import asyncio

import pytest

from switchboard_core.errors import Unauthenticated, Unavailable
from switchboard_core.verified_cache import STALE_SERVED, Unreachable, Verified, VerifiedCache

TTL = 10.0
STALE = 600.0
OWNERS = {"secret-a": ("a", "acme"), "secret-b": ("b", "acme"), "secret-c": ("c", "other")}


class Metering:
    """A fake metering: answers, is unreachable, or refuses a key; counts the calls."""

    def __init__(self) -> None:
        self.reachable = True
        self.revoked: set[str] = set()
        self.calls = 0
        self.gate: asyncio.Event | None = None  # when set, answers wait for it

    async def fetch(self, secret: str) -> Verified[str]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if not self.reachable:
            raise Unreachable(
                Unavailable("down", reason="KEY_SERVICE_UNAVAILABLE", retry_after_seconds=1.0)
            )
        key_id, account = OWNERS[secret]
        if key_id in self.revoked:
            raise Unauthenticated("invalid API key")
        return Verified(f"caller-{key_id}", (f"key:{key_id}", f"account:{account}"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(metering: Metering, clock: Clock) -> VerifiedCache[str]:
    return VerifiedCache(
        "api_key", metering.fetch, ttl_seconds=TTL, stale_seconds=STALE, clock=clock
    )


async def settle() -> None:
    """Let background refreshes run to their end (done callbacks included)."""
    for _ in range(5):
        await asyncio.sleep(0)


def _stale_count() -> float:
    return float(STALE_SERVED.labels("api_key")._value.get())


async def test_a_key_verified_before_serves_stale_while_metering_is_unreachable() -> None:
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    assert await cache.get("secret-a") == "caller-a"
    metering.reachable = False
    assert await cache.get("secret-a") == "caller-a"  # fresh: metering not asked
    assert metering.calls == 1
    clock.now += TTL + 1
    before = _stale_count()
    assert await cache.get("secret-a") == "caller-a"  # refresh failed: stale
    assert metering.calls == 2
    assert cache.unreachable
    # Now that a refresh failed, requests are served at once; one background refresh per
    # key per retry interval.
    for _ in range(5):
        assert await cache.get("secret-a") == "caller-a"
    await settle()
    assert metering.calls == 2
    assert _stale_count() - before == 6
    clock.now += 1.5
    assert await cache.get("secret-a") == "caller-a"
    await settle()
    assert metering.calls == 3  # the background refresh, rate-limited
    metering.reachable = True
    clock.now += 1.5
    assert await cache.get("secret-a") == "caller-a"  # served stale, refreshed behind it
    await settle()
    assert not cache.unreachable
    calls = metering.calls
    assert await cache.get("secret-a") == "caller-a"
    assert metering.calls == calls  # fresh again


async def test_stale_answers_end_after_the_stale_bound() -> None:
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    await cache.get("secret-a")
    metering.reachable = False
    clock.now += STALE + 1
    with pytest.raises(Unavailable) as raised:
        await cache.get("secret-a")
    assert raised.value.retry_after_seconds is not None


async def test_a_never_seen_key_fails_unavailable_while_metering_is_unreachable() -> None:
    metering, clock = Metering(), Clock()
    metering.reachable = False
    cache = _cache(metering, clock)
    with pytest.raises(Unavailable) as raised:
        await cache.get("secret-a")
    assert raised.value.reason == "KEY_SERVICE_UNAVAILABLE"


async def test_a_change_evicts_only_the_keys_it_names() -> None:
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    for secret in OWNERS:
        await cache.get(secret)
    assert metering.calls == 3
    assert cache.evict("key:a") == 1
    assert cache.evict("key:unknown") == 0
    for secret in OWNERS:
        await cache.get(secret)
    assert metering.calls == 4  # only a went back to metering
    assert cache.evict("account:acme") == 2  # a and b
    for secret in OWNERS:
        await cache.get(secret)
    assert metering.calls == 6


async def test_an_evicted_key_is_not_served_stale() -> None:
    """A revocation announced during a partition applies: the key must be re-verified."""
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    await cache.get("secret-a")
    await cache.get("secret-b")
    metering.reachable = False
    clock.now += TTL + 1
    assert await cache.get("secret-a") == "caller-a"  # stale
    cache.evict("key:a")
    with pytest.raises(Unavailable):
        await cache.get("secret-a")
    assert await cache.get("secret-b") == "caller-b"  # the other key still serves


async def test_a_verdict_drops_the_key() -> None:
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    await cache.get("secret-a")
    metering.revoked.add("a")
    clock.now += TTL + 1
    with pytest.raises(Unauthenticated):
        await cache.get("secret-a")
    metering.reachable = False
    with pytest.raises(Unavailable):  # nothing left to serve stale
        await cache.get("secret-a")


async def test_after_a_reconnect_keys_are_reverified_but_still_usable_stale() -> None:
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    await cache.get("secret-a")
    await cache.get("secret-b")
    metering.revoked.add("a")  # announced while the listener was away: missed
    cache.mark_all_due()
    with pytest.raises(Unauthenticated):
        await cache.get("secret-a")  # re-verified at once, not after the cache time
    metering.reachable = False
    cache.mark_all_due()
    assert await cache.get("secret-b") == "caller-b"  # metering down too: stale
    assert len(cache) == 1


async def test_an_answer_racing_a_change_is_served_once_and_not_kept() -> None:
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    metering.gate = asyncio.Event()
    waiting = asyncio.create_task(cache.get("secret-a"))
    await settle()
    cache.evict("account:acme")  # the change arrives while metering's answer is on its way
    metering.gate.set()
    assert await waiting == "caller-a"
    assert len(cache) == 0


async def test_concurrent_requests_share_one_fetch() -> None:
    metering, clock = Metering(), Clock()
    cache = _cache(metering, clock)
    metering.gate = asyncio.Event()
    waiting = [asyncio.create_task(cache.get("secret-a")) for _ in range(5)]
    await settle()
    metering.gate.set()
    assert await asyncio.gather(*waiting) == ["caller-a"] * 5
    assert metering.calls == 1


async def test_an_answer_is_never_kept_past_the_keys_expiry() -> None:
    clock = Clock()
    wall = [5000.0]

    async def fetch(secret: str) -> Verified[str]:
        return Verified("caller", ("key:x",), expire_time=wall[0] + 2)

    cache: VerifiedCache[str] = VerifiedCache(
        "api_key",
        fetch,
        ttl_seconds=TTL,
        stale_seconds=STALE,
        clock=clock,
        wall_clock=lambda: wall[0],
    )
    await cache.get("s")
    assert len(cache) == 1
    clock.now += 3  # past the expiry: dropped, asked again
    assert await cache.get("s") == "caller"
