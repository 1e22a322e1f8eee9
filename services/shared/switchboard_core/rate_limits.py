"""Traffic limits (requests per minute, tokens per minute, concurrent requests) of a key, an
account or an upstream endpoint, as the router enforces them in Redis.

SCAFFOLD: the dataclass below is shared by metering (storage, admin API), the router's
admission and its endpoint gate. The Redis scripts that enforce it come here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.metering.v1 import metering_pb2

MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_TOKENS_PER_MINUTE = 10_000_000_000
MAX_CONCURRENT = 100_000


@dataclass(frozen=True, slots=True)
class RateLimits:
    """0 means no limit."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0

    @property
    def enforced(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_concurrent)

    @classmethod
    def from_proto(cls, limits: metering_pb2.RateLimits) -> RateLimits:
        return cls(limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent)

    def to_proto(self) -> metering_pb2.RateLimits:
        return metering_pb2.RateLimits(
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent=self.max_concurrent,
        )


NO_RATE_LIMITS = RateLimits()
