"""The usage outbox's layout, shared by its writers (routers, metering's sweep of dead routers)
and its reader (metering's consumer): a Redis stream whose entries hold one serialized
``metering.v1.UsageEvent`` in the field :data:`EVENT_FIELD`."""

from __future__ import annotations

DEFAULT_USAGE_STREAM = "switchboard:usage"
EVENT_FIELD = b"e"
