"""The router's Caller carries the verified key's rate limits and its account's, as metering
sent them; a limit out of bounds (never sent by a sound metering) makes the key unverifiable,
and an announced change to the key or its account is fetched again on the next request."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import Unavailable
from switchboard_core.rate_limits import (
    MAX_CONCURRENT,
    MAX_REQUESTS_PER_MINUTE,
    MAX_TOKENS_PER_MINUTE,
    NO_RATE_LIMITS,
    RateLimits,
)
from switchboard_core.remote_credentials import MeteringCredentials
from switchboard_router.auth import KeyVerifier, RouterCredentials, caller_of

SECRET = "sk-sb-v1-" + "r" * 43


class _Metering:
    """Metering's VerifyApiKey, answering with ``key`` (which a test may change)."""

    def __init__(self, key: metering_pb2.ApiKey) -> None:
        self.key = key
        self.calls = 0

    async def VerifyApiKey(self, request: Any, **kwargs: Any) -> metering_pb2.VerifyApiKeyResponse:
        self.calls += 1
        return metering_pb2.VerifyApiKeyResponse(api_key=self.key)


def _verifier(key: metering_pb2.ApiKey) -> tuple[KeyVerifier, _Metering]:
    # The channel is never used: its stub is replaced.
    verifier = KeyVerifier(grpc.aio.insecure_channel("127.0.0.1:9"), ttl_seconds=60.0)
    metering = _Metering(key)
    verifier._stub = metering  # type: ignore[assignment]
    return verifier, metering


def _key(
    own: metering_pb2.RateLimits | None = None, shared: metering_pb2.RateLimits | None = None
) -> metering_pb2.ApiKey:
    key = metering_pb2.ApiKey(id="key_1", account_id="acme")
    if own is not None:
        key.rate_limits.CopyFrom(own)
    if shared is not None:
        key.account_rate_limits.CopyFrom(shared)
    return key


async def test_the_caller_carries_the_keys_and_its_accounts_rate_limits() -> None:
    own = metering_pb2.RateLimits(requests_per_minute=60, tokens_per_minute=9000, max_concurrent=2)
    shared = metering_pb2.RateLimits(
        requests_per_minute=MAX_REQUESTS_PER_MINUTE,
        tokens_per_minute=MAX_TOKENS_PER_MINUTE,
        max_concurrent=MAX_CONCURRENT,
    )
    verifier, _ = _verifier(_key(own, shared))
    caller = await verifier.verify_secret(SECRET)
    assert caller.rate_limits == RateLimits(60, 9000, 2)
    assert caller.account_rate_limits == RateLimits(
        MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE, MAX_CONCURRENT
    )
    assert caller.rate_limits.enforced and caller.account_rate_limits.enforced


async def test_a_key_without_rate_limits_has_none() -> None:
    verifier, _ = _verifier(_key())
    caller = await verifier.verify_secret(SECRET)
    assert caller.rate_limits == caller.account_rate_limits == NO_RATE_LIMITS
    assert not caller.rate_limits.enforced


@pytest.mark.parametrize(
    ("own", "shared"),
    [
        (metering_pb2.RateLimits(requests_per_minute=MAX_REQUESTS_PER_MINUTE + 1), None),
        (None, metering_pb2.RateLimits(tokens_per_minute=2**64 - 1)),
        (None, metering_pb2.RateLimits(max_concurrent=MAX_CONCURRENT + 1)),
    ],
    ids=["key rpm", "account tpm", "account concurrency"],
)
async def test_a_limit_out_of_bounds_makes_the_key_unverifiable(
    own: metering_pb2.RateLimits | None,
    shared: metering_pb2.RateLimits | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    verifier, _ = _verifier(_key(own, shared))
    with pytest.raises(Unavailable) as refused:
        await verifier.verify_secret(SECRET)
    assert refused.value.reason == "KEY_SERVICE_UNAVAILABLE"
    assert "metering sent a rate limit out of bounds" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("subject", ["key:key_1", "account:acme"])
async def test_an_announced_change_is_verified_again_at_once(subject: str) -> None:
    verifier, metering = _verifier(_key())
    credentials = RouterCredentials(
        verifier,
        MeteringCredentials(grpc.aio.insecure_channel("127.0.0.1:9"), ttl_seconds=60.0),
    )
    assert caller_of(await credentials.tenant(SECRET)).rate_limits == NO_RATE_LIMITS
    metering.key = _key(
        metering_pb2.RateLimits(requests_per_minute=10),
        metering_pb2.RateLimits(max_concurrent=3),
    )
    await credentials.tenant(SECRET)
    assert metering.calls == 1  # cached for a minute...
    credentials.key_changed(subject)  # ...until metering announces the change
    caller = caller_of(await credentials.tenant(SECRET))
    assert metering.calls == 2
    assert caller.rate_limits == RateLimits(requests_per_minute=10)
    assert caller.account_rate_limits == RateLimits(max_concurrent=3)
