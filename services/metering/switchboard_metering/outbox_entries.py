"""One entry of the usage outbox, read: its event, its dead letter or its deferral (no I/O).

An entry (:data:`Entry`) holds a serialized ``UsageEvent`` in the field
:data:`~switchboard_core.usage_outbox.EVENT_FIELD`; its id is ``<Redis ms clock>-<sequence>``,
which says when it reached the stream (:func:`arrival`). :func:`read_entry` parses it and runs
the ledger's checks (:mod:`switchboard_metering.event_rules`): the event to write, a
:class:`Dead` letter (why: field names only, never payload contents), or a :class:`Deferred`
entry whose cost the price check cannot settle yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import DecodeError

from switchboard.metering.v1 import metering_pb2
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.event_rules import DEFAULT_RULES, EventRules, Problem, check_event

# Reasons (bounded). ``field`` is a UsageEvent field path such as usage.prompt_tokens: bounded
# by the message's fields, and empty for malformed and refused entries.
MALFORMED, INVALID, REFUSED = "malformed", "invalid", "refused"

# (entry id, fields); fields is None for an entry deleted while pending.
Entry = tuple[bytes, dict[bytes, bytes] | None]
# (entry id, serialized event, event) of an entry that parsed and checked.
Good = tuple[bytes, bytes, metering_pb2.UsageEvent]


@dataclass(frozen=True, slots=True)
class Dead:
    """An entry for the dead-letter stream: why (kept with it), and the metric's labels."""

    entry_id: bytes
    raw: bytes
    why: str  # field names and bounds only, never payload contents
    reason: str = MALFORMED
    field: str = ""


@dataclass(frozen=True, slots=True)
class Deferred:
    """An entry the cost check cannot settle yet: left pending (unacknowledged), so that it
    is checked again when claimed (``claim_idle_ms`` later)."""

    entry_id: bytes
    field: str


def parse_entry(
    fields: dict[bytes, bytes], rules: EventRules = DEFAULT_RULES, *, now: datetime | None = None
) -> tuple[metering_pb2.UsageEvent | None, str]:
    """The entry's event, or None and why (field names only, never payload contents)."""
    parsed = read_entry(b"", fields, rules, now)
    if isinstance(parsed, Dead):
        return None, parsed.why
    if isinstance(parsed, Deferred):
        return None, f"unsettled event.{parsed.field}"
    return parsed, ""


def arrival(entry_id: bytes) -> float | None:
    """When the entry reached the stream: its id is ``<Redis ms clock>-<sequence>``."""
    millis = entry_id.partition(b"-")[0]
    return int(millis) / 1000 if millis.isdigit() else None


def read_entry(
    entry_id: bytes, fields: dict[bytes, bytes], rules: EventRules, now: datetime | None
) -> metering_pb2.UsageEvent | Dead | Deferred:
    """The entry's event, its dead letter, or its deferral."""
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        return Dead(entry_id, b"", "missing field e")
    event = metering_pb2.UsageEvent()
    try:
        event.ParseFromString(raw)
    except DecodeError:
        return Dead(entry_id, raw, "not a serialized UsageEvent")
    later: list[Problem] = []
    problems = check_event(
        event, "event", rules, now=now, arrival=arrival(entry_id), unsettled=later
    )
    if problems:
        names = [name.removeprefix("event.") for name, _ in problems]
        why = "invalid " + ", ".join(f"event.{name}" for name in names)
        return Dead(entry_id, raw, why, INVALID, names[0])
    if later:
        return Deferred(entry_id, later[0][0].removeprefix("event."))
    return event


def stream_entries(response: Any) -> list[Entry]:
    """Entries of an XREADGROUP reply (RESP2 list or RESP3 dict) for our one stream."""
    streams = response.values() if isinstance(response, dict) else (s for _, s in response or ())
    return [(entry_id, fields) for items in streams for entry_id, fields in items]
