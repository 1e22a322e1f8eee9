"""Provider metadata (citations, grounding, safety ratings, stop details, ...) as clients get it.

Adapters pass through what a provider said beyond text and usage as
:class:`~switchboard_router.canonical.ProviderMetadata` events; the relay merges them (a later
key replaces an earlier one) and the service returns the result as a ``google.protobuf.Struct``.
It is bounded: a provider (or a compromised one) cannot make the final message arbitrarily
large. Metadata over :data:`MAX_METADATA_BYTES` of JSON is replaced by ``{"truncated": true}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from google.protobuf import struct_pb2

MAX_METADATA_BYTES = 64 * 1024
TRUNCATED: dict[str, Any] = {"truncated": True}


def merged_metadata(current: dict[str, Any] | None, data: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` updated with ``data``, or :data:`TRUNCATED` when that is too large."""
    if current is TRUNCATED:
        return TRUNCATED
    merged = {**(current or {}), **data}
    try:
        size = len(orjson.dumps(merged))
    except TypeError:  # not JSON (an adapter's bug): dropped rather than sent half-formed
        return TRUNCATED
    return merged if size <= MAX_METADATA_BYTES else TRUNCATED


def metadata_struct(metadata: Mapping[str, Any]) -> struct_pb2.Struct:
    """The metadata as a Struct (numbers become doubles, as JSON numbers are)."""
    struct = struct_pb2.Struct()
    struct.update(orjson.loads(orjson.dumps(metadata)))
    return struct
