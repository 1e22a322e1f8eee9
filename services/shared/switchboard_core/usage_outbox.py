"""The usage outbox's layout, shared by its writers (routers, metering's sweep of dead routers)
and its reader (metering's consumer): Redis streams whose entries hold one serialized
``metering.v1.UsageEvent`` in the field :data:`EVENT_FIELD`.

On Redis Cluster a MULTI or a script must touch one hash slot. The router adds an event and
deletes the generation's in-flight records (:mod:`switchboard_core.liveness`) in one script,
so those records live in the stream's slot: :func:`colocated` names a key that hashes with the
stream. A key's slot is the CRC16 of its hash tag (the text between its first ``{`` and the
next ``}``, when not empty) or of the whole name, so the stream keeps its name
(``switchboard:usage`` hashes as the tag ``{switchboard:usage}`` does) and nothing drained
from it moves on an upgrade.

**Sharded** (``SWITCHBOARD_USAGE_STREAMS=N`` on the routers, N > 1): one stream is one slot,
so one Redis shard's core; past about 10,000 events a second (docs/SCALING.md) the outbox
becomes N streams ``<base>:0`` ... ``<base>:<N-1>`` (:func:`usage_streams`), each hashed whole,
so on N slots. A router writes one of them for its whole life, chosen from its router id
(:func:`stream_for`): its in-flight records sit in that stream's slot, its publish script stays
in one slot, and a spooled event another process left goes to that process's stream
(:func:`stream_for` of its id). Each router adds its stream to the registry set
(:func:`registry_key`) at every heartbeat; metering drains the base stream and every stream
the registry lists (at most :data:`MAX_USAGE_STREAMS`), so a router configured with more
streams than metering expected loses nothing, and N can grow without touching metering.
"""

from __future__ import annotations

import zlib

DEFAULT_USAGE_STREAM = "switchboard:usage"
EVENT_FIELD = b"e"
MAX_USAGE_STREAMS = 64


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


def streams_problem(base: str, count: int) -> str | None:
    """Why ``base`` cannot be split into ``count`` streams (counted from 1 to
    :data:`MAX_USAGE_STREAMS`, as the setting's reader bounds them), or None: the shards are
    named ``<base>:<i>`` and hashed whole, so a base with a hash tag would put them all in its
    one slot."""
    if count > 1 and ("{" in base or "}" in base):
        return "the usage stream's name must hold no hash tag when it is split into streams"
    return None


def usage_streams(base: str, count: int) -> tuple[str, ...]:
    """The outbox's streams: ``(base,)`` when not split, else ``<base>:0`` ... ``<base>:<N-1>``."""
    if count == 1:
        return (base,)
    return tuple(f"{base}:{index}" for index in range(count))


def stream_for(router_id: str, streams: tuple[str, ...]) -> str:
    """The stream router ``router_id`` writes (the same for the same id and streams)."""
    if len(streams) == 1:
        return streams[0]
    return streams[zlib.crc32(router_id.encode()) % len(streams)]


def registry_key(base: str) -> str:
    """The set of the streams routers write besides ``base`` (metering drains each)."""
    return f"{base}:streams"


def is_shard_of(base: str, stream: str) -> bool:
    """``stream`` is one of ``base``'s shard names (``<base>:<i>``, i below the maximum): a
    registry entry metering may drain."""
    prefix = f"{base}:"
    if not stream.startswith(prefix):
        return False
    index = stream[len(prefix) :]
    if not (index.isascii() and index.isdigit()) or len(index) > 2:
        return False
    return index == str(int(index)) and int(index) < MAX_USAGE_STREAMS


def colocated(stream: str, suffix: str) -> str:
    """A key in ``stream``'s hash slot: ``{<its tag>}<suffix>``."""
    return "{" + hash_tag(stream) + "}" + suffix
