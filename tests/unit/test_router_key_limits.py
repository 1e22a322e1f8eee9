"""The spend limits a verified key carries are read with the shared money grammar
(``switchboard_core.money.parse_usd``): exact decimals, unset when empty; an amount metering
should never send (an exponent, a sign, not a number) makes the key unverifiable, never
unlimited nor a different amount, and the log names the key, not its secret."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import grpc
import pytest

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import Unavailable
from switchboard_router.auth import KeyVerifier

SECRET = "sk-sb-v1-" + "m" * 43


class _Metering:
    """Metering's VerifyApiKey, answering with ``key``."""

    def __init__(self, key: metering_pb2.ApiKey) -> None:
        self.key = key

    async def VerifyApiKey(self, request: Any, **kwargs: Any) -> metering_pb2.VerifyApiKeyResponse:
        return metering_pb2.VerifyApiKeyResponse(api_key=self.key)


def _verifier(limits: metering_pb2.SpendLimits) -> KeyVerifier:
    key = metering_pb2.ApiKey(id="key_9", account_id="acme", account_prepaid=True)
    key.limits.CopyFrom(limits)
    # The channel is never used: its stub is replaced.
    verifier = KeyVerifier(grpc.aio.insecure_channel("127.0.0.1:9"), ttl_seconds=60.0)
    verifier._stub = _Metering(key)  # type: ignore[assignment]
    return verifier


async def test_spend_limits_are_exact_decimals_and_unset_when_empty() -> None:
    verifier = _verifier(metering_pb2.SpendLimits(total_usd="1.5", daily_usd="0.000001"))
    limits = (await verifier.verify_secret(SECRET)).limits
    assert limits.total == Decimal("1.5") and limits.daily == Decimal("0.000001")
    assert limits.monthly is None and limits.prepaid


@pytest.mark.parametrize(
    "limits",
    [
        metering_pb2.SpendLimits(total_usd="1e3"),
        metering_pb2.SpendLimits(daily_usd="-1"),
        metering_pb2.SpendLimits(monthly_usd="NaN"),
        metering_pb2.SpendLimits(daily_usd="Infinity"),
        metering_pb2.SpendLimits(total_usd="1.5.0"),
    ],
    ids=["exponent", "negative", "nan", "infinity", "two points"],
)
async def test_a_malformed_spend_limit_makes_the_key_unverifiable(
    limits: metering_pb2.SpendLimits, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(Unavailable) as refused:
        await _verifier(limits).verify_secret(SECRET)
    assert refused.value.reason == "KEY_SERVICE_UNAVAILABLE"
    assert "metering sent a malformed key limit" in caplog.text
    assert any(getattr(record, "key_id", None) == "key_9" for record in caplog.records)
    assert SECRET not in caplog.text
