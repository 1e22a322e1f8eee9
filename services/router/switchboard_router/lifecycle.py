"""Deprecation and retirement of models and endpoints, as the router applies them.

The catalog carries the dates (``Model.deprecation_time`` / ``retirement_time`` /
``successor_model_id``, ``Endpoint.deprecation_time`` / ``retirement_time``); the router's
clock decides when they have passed:

- an endpoint is *retired* once its own retirement time or its model's has passed: it is not
  routed to and the public model list leaves it out (``catalog_cache.Snapshot``);
- a model is retired once its retirement time has passed, or once every endpoint that would
  serve it is retired (then at the last of their retirement times). A request naming it fails
  fast with :class:`ModelRetired`: ``FAILED_PRECONDITION``, reason ``MODEL_RETIRED``, the
  message naming the date and the successor ("anthropic/claude-3.5-haiku was retired on
  2026-10-22; use anthropic/claude-haiku-4.5"), and ``ErrorInfo.metadata`` ``model``,
  ``retirement_time`` (RFC 3339, UTC), ``retirement_date`` (YYYY-MM-DD) and, when the catalog
  names one, ``successor_model_id``. Fallback models still apply: a retired primary with a live
  fallback is served by the fallback;
- an endpoint is *deprecated* once its own deprecation time or its model's has passed (and it
  is not retired): it still answers, and the response carries the trailing metadata entry
  :data:`DEPRECATED_HEADER` (``switchboard-deprecated: <model>; retires=<YYYY-MM-DD>;
  successor=<model id>``, each of the last two only when known) and counts in
  ``switchboard_router_deprecated_requests_total{model}``.

Pure functions and values: no I/O, the clock is always passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from switchboard.catalog.v1 import catalog_pb2
from switchboard_core.errors import FailedPrecondition

# The trailing metadata key of a response served by a deprecated model or endpoint.
DEPRECATED_HEADER = "switchboard-deprecated"


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _time(message: catalog_pb2.Model | catalog_pb2.Endpoint, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def date_text(when: datetime) -> str:
    """``2026-10-22``: the UTC date, as messages and the trailing entry name it."""
    return when.astimezone(UTC).date().isoformat()


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When something was (or will be) deprecated and retired; None when not announced."""

    deprecation_time: datetime | None = None
    retirement_time: datetime | None = None
    successor_model_id: str = ""

    def retired(self, now: datetime) -> bool:
        return self.retirement_time is not None and self.retirement_time <= now

    def deprecated(self, now: datetime) -> bool:
        """Deprecated and still serving."""
        return (
            self.deprecation_time is not None
            and self.deprecation_time <= now
            and not self.retired(now)
        )

    def within(self, outer: Lifecycle) -> Lifecycle:
        """This endpoint's lifecycle inside its model's ``outer``: whichever date comes first,
        the model's successor."""
        return Lifecycle(
            deprecation_time=_earliest(self.deprecation_time, outer.deprecation_time),
            retirement_time=_earliest(self.retirement_time, outer.retirement_time),
            successor_model_id=outer.successor_model_id or self.successor_model_id,
        )

    def times(self) -> tuple[datetime, ...]:
        return tuple(t for t in (self.deprecation_time, self.retirement_time) if t is not None)


NO_LIFECYCLE = Lifecycle()


def of_model(model: catalog_pb2.Model) -> Lifecycle:
    return Lifecycle(
        deprecation_time=_time(model, "deprecation_time"),
        retirement_time=_time(model, "retirement_time"),
        successor_model_id=model.successor_model_id,
    )


def of_endpoint(model: Lifecycle, endpoint: catalog_pb2.Endpoint) -> Lifecycle:
    """The endpoint's effective lifecycle: its own dates within its model's."""
    own = Lifecycle(
        deprecation_time=_time(endpoint, "deprecation_time"),
        retirement_time=_time(endpoint, "retirement_time"),
    )
    return own.within(model)


def model_retirement(model: Lifecycle, endpoints: Iterable[Lifecycle]) -> Lifecycle:
    """The model's lifecycle as requests see it: retired at its own retirement time, or when
    the last of its serving endpoints retires if every one of them has a retirement time."""
    ends = [e.retirement_time for e in endpoints]
    if not ends or any(end is None for end in ends):
        return model
    last = max(end for end in ends if end is not None)
    return Lifecycle(
        deprecation_time=model.deprecation_time,
        retirement_time=_earliest(model.retirement_time, last),
        successor_model_id=model.successor_model_id,
    )


def next_change(lifecycles: Iterable[Lifecycle], now: datetime) -> datetime | None:
    """The first deprecation or retirement time after ``now``: when a snapshot built at
    ``now`` stops being current."""
    future = [t for lifecycle in lifecycles for t in lifecycle.times() if t > now]
    return min(future) if future else None


class ModelRetired(FailedPrecondition):
    reason = "MODEL_RETIRED"


def retired_error(model_id: str, lifecycle: Lifecycle) -> ModelRetired:
    """The error for a request naming ``model_id``, retired (``lifecycle.retirement_time`` is
    set and has passed)."""
    when = lifecycle.retirement_time
    assert when is not None
    message = f"{model_id} was retired on {date_text(when)}"
    metadata = {
        "model": model_id,
        "retirement_time": rfc3339(when),
        "retirement_date": date_text(when),
    }
    if lifecycle.successor_model_id:
        message += f"; use {lifecycle.successor_model_id}"
        metadata["successor_model_id"] = lifecycle.successor_model_id
    return ModelRetired(message, metadata=metadata)


def deprecation_notice(model_id: str, lifecycle: Lifecycle) -> str:
    """The :data:`DEPRECATED_HEADER` value: ``<model>; retires=<date>; successor=<id>``."""
    parts = [model_id]
    if lifecycle.retirement_time is not None:
        parts.append(f"retires={date_text(lifecycle.retirement_time)}")
    if lifecycle.successor_model_id:
        parts.append(f"successor={lifecycle.successor_model_id}")
    return "; ".join(parts)


def now_utc() -> datetime:
    return datetime.now(UTC)
