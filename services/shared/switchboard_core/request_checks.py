"""Checks every server applies to every request before its handler sees it.

- A payload that does not decode as the RPC's request message (garbage bytes, a string field
  holding invalid UTF-8) becomes :data:`UNDECODABLE`, which the interceptor answers with
  ``INVALID_ARGUMENT``: the gRPC library would otherwise answer ``UNKNOWN`` and log a traceback.
- No string anywhere in a request may hold a NUL character: Postgres cannot store one, and no
  provider needs one. No ``google.protobuf.Timestamp`` or ``Duration`` may be outside the
  range its definition gives (years 0001 to 9999, nanos from 0 to 999,999,999; ±10,000
  years): proto JSON cannot show one, so the audit log could not record a write carrying it,
  and ``ToDatetime`` refuses it. :func:`request_violations` walks the message by its
  descriptor and names each offending field by its path (``messages[2].content``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

MAX_VIOLATIONS = 20
_NUL = "\x00"
_NUL_PROBLEM = "must not contain NUL characters"
# Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z; Duration: ±10,000 years.
_MIN_TIMESTAMP_SECONDS = -62_135_596_800
_MAX_TIMESTAMP_SECONDS = 253_402_300_799
_MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"


class _Undecodable:
    """Stands for a request payload that did not decode."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDECODABLE"


UNDECODABLE: Any = _Undecodable()


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning :data:`UNDECODABLE` instead of raising."""
    if deserializer is None:
        return None
    parse = deserializer

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError, and whatever a broken payload makes the parser raise
            return UNDECODABLE

    return parse_or_mark


def request_violations(message: Message, limit: int = MAX_VIOLATIONS) -> list[tuple[str, str]]:
    """``(field path, why)`` for each string holding a NUL character and each Timestamp or
    Duration out of range, at most ``limit``."""
    out: list[tuple[str, str]] = []
    _walk(message, "", out, limit)
    return out


def _time_problem(message: Message) -> str | None:
    """Why a Timestamp or Duration is out of range; None when it is not one or is fine."""
    # The type first: asking any other message for its ``seconds`` (a miss, an AttributeError
    # caught inside getattr) was most of the walk's cost (measured).
    name = message.DESCRIPTOR.full_name
    if name == _TIMESTAMP:
        stamp = cast(timestamp_pb2.Timestamp, message)
        if not _MIN_TIMESTAMP_SECONDS <= stamp.seconds <= _MAX_TIMESTAMP_SECONDS or not (
            0 <= stamp.nanos <= _MAX_NANOS
        ):
            return "not a valid Timestamp: from year 0001 to 9999, nanos from 0 to 999999999"
    elif name == _DURATION:
        span = cast(duration_pb2.Duration, message)
        seconds, nanos = span.seconds, span.nanos
        if (
            abs(seconds) > _MAX_DURATION_SECONDS
            or abs(nanos) > _MAX_NANOS
            or (seconds < 0 < nanos)
            or (nanos < 0 < seconds)
        ):
            return "not a valid Duration: at most 10000 years, nanos of the seconds' sign"
    return None


def _walk(message: Message, prefix: str, out: list[tuple[str, str]], limit: int) -> None:
    problem = _time_problem(message)
    if problem is not None:
        out.append((prefix.removesuffix("."), problem))
        return
    for field, value in message.ListFields():
        if len(out) >= limit:
            return
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for index, item in enumerate(value):
                    if _NUL in item:
                        out.append((f"{path}[{index}]", _NUL_PROBLEM))
            elif _NUL in value:
                out.append((path, _NUL_PROBLEM))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str) and _NUL in key:
                        out.append((f"{path}[{key!r}]", _NUL_PROBLEM))
                    if isinstance(item, Message):
                        _walk(item, f"{path}[{key!r}].", out, limit)
                    elif isinstance(item, str) and _NUL in item:
                        out.append((f"{path}[{key!r}]", _NUL_PROBLEM))
            elif field.is_repeated:
                for index, item in enumerate(value):
                    _walk(item, f"{path}[{index}].", out, limit)
            else:
                _walk(value, f"{path}.", out, limit)
