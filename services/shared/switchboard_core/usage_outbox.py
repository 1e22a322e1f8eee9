"""The usage outbox's layout, shared by its writers (routers, metering's sweep of dead routers)
and its reader (metering's consumer): a Redis stream whose entries hold one serialized
``metering.v1.UsageEvent`` in the field :data:`EVENT_FIELD`.

On Redis Cluster a MULTI or a script must touch one hash slot. The router adds an event and
deletes the generation's in-flight records (:mod:`switchboard_core.liveness`) in one
MULTI/EXEC, so those records live in the stream's slot: :func:`colocated` names a key that
hashes with the stream. A key's slot is the CRC16 of its hash tag (the text between its first
``{`` and the next ``}``, when not empty) or of the whole name, so the stream keeps its name
(``switchboard:usage`` hashes as the tag ``{switchboard:usage}`` does) and nothing drained
from it moves on an upgrade.
"""

from __future__ import annotations

DEFAULT_USAGE_STREAM = "switchboard:usage"
EVENT_FIELD = b"e"


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of ``key``: its hash tag, else the whole name."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def stream_problem(stream: str) -> str | None:
    """Why ``stream`` cannot have keys hashed with it, or None. A name without a hash tag is
    hashed whole, so it must not hold a ``}`` (it would end the tag its keys are given)."""
    if not stream:
        return "must not be empty"
    if hash_tag(stream) == stream and ("}" in stream or "{" in stream):
        return "braces must form a hash tag ({tag}) or not appear"
    return None


def colocated(stream: str, suffix: str) -> str:
    """A key in ``stream``'s hash slot: ``{<its tag>}<suffix>``."""
    return "{" + hash_tag(stream) + "}" + suffix
