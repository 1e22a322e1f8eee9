"""Hypothesis strategies for any protobuf message, built from its descriptor, and for the bytes
of broken ones: what a fuzzer sends to an RPC.

:func:`messages` walks a message descriptor: every field may be set (oneofs: at most one
member), strings come from a per-field hook (``Strings``; default :func:`any_text`: unicode,
control characters including NUL, huge ones, never a surrogate), integers sit at their type's
extremes as often as in between, doubles include NaN, infinities, -0.0 and 1e308, enums
include numbers the enum does not know, repeated fields and maps hold a few entries, nested
messages recurse down to ``max_depth``, and ``google.protobuf.Timestamp``/``Duration`` get
extreme seconds and nanos (year 1, year 9999 and beyond, negative nanos).
:func:`mutated` breaks serialized messages (truncation, flipped bytes, garbage appended or
inserted, impossible lengths and varints); :func:`random_bytes` is noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

T = TypeVar("T")
Strings = Callable[[FieldDescriptor], st.SearchStrategy[str]]

_F = FieldDescriptor
INT_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((_F.TYPE_UINT32, _F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_F.TYPE_UINT64, _F.TYPE_FIXED64), (0, 2**64 - 1)),
}
DOUBLES = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.5, 1.0, 2.0, 1e9)
# Characters that break naive code: NUL and other controls, line and paragraph separators,
# bidi overrides, a BOM, zero width, the highest code point, combining marks.
SPECIAL_CHARACTERS = (
    "\x00\x01\x07\x08\t\n\r\x1b\x7f\x85\u2028\u2029\u202e\ufeff\u200b\U0010ffff\u0301"
)
SPECIAL_TEXTS = (
    "",
    " ",
    "\x00",
    "\r\n",
    "null",
    "NaN",
    "-1",
    "1e999",
    "0x7f",
    "%s%n%x",
    "'; DROP TABLE api_keys; --",
    "../../../../etc/passwd",
    "{{7*7}}",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",  # Fraktur
    "\uff21\u5168\u89d2",  # fullwidth A, CJK
    "e\u0301\u0301\u0301",
)
# A Timestamp's valid range is 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_YEAR_1 = -62_135_596_800
_YEAR_10000 = 253_402_300_800
_NOW = int(time.time())
TIMESTAMP_SECONDS = (
    _YEAR_1,
    _YEAR_1 - 1,
    _YEAR_10000 - 1,
    _YEAR_10000,
    0,
    -1,
    -(2**63),
    2**63 - 1,
    _NOW,
    _NOW - 3600,
    _NOW + 3600,
    _NOW - 40 * 86_400,
    _NOW + 400 * 86_400,
)
NANOS = (0, 1, -1, 999_999_999, 1_000_000_000, -(2**31), 2**31 - 1)
DURATION_SECONDS = (0, 1, -1, 315_576_000_000, 315_576_000_001, -(2**63), 2**63 - 1)


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """``one_of`` with integer weights: a branch of weight 3 is drawn three times as often as
    one of weight 1 (``one_of`` itself does not draw its branches evenly)."""
    branches = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(branches).flatmap(lambda strategy: strategy)


def huge_text() -> st.SearchStrategy[str]:
    """Long strings: past most length limits (70k), and past gRPC's 4 MiB message limit."""
    return st.builds(
        lambda unit, count: unit * count,
        st.sampled_from(("a", "é", "😀", "\x01", " ", "0")),
        st.sampled_from((1_000, 70_000, 1_100_000)),
    )


def any_text() -> st.SearchStrategy[str]:
    """Unicode of every kind (hypothesis never draws surrogates), mostly printable."""
    printable = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=40)
    return weighted(
        (20, printable),
        (4, st.text(max_size=20)),  # any character, control ones included
        (4, st.sampled_from(SPECIAL_TEXTS)),
        (2, st.text(st.sampled_from(SPECIAL_CHARACTERS), min_size=1, max_size=8)),
        (1, huge_text()),  # rare: a message has many strings
    )


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in ``[low, high]``, at the extremes as often as small and anywhere between."""
    edges = sorted(
        {
            low,
            low + 1,
            high,
            high - 1,
            *(v for v in (0, 1, -1, 2**31 - 1, 2**53) if low <= v <= high),
        }
    )
    return st.one_of(
        st.sampled_from(edges),
        st.integers(max(low, -100), min(high, 10_000)),
        st.integers(low, high),
    )


def doubles(width: int = 64) -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(DOUBLES), st.floats(width=width))  # type: ignore[arg-type]


def timestamps(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda seconds, nanos: cls(seconds=seconds, nanos=nanos),
        st.one_of(st.sampled_from(TIMESTAMP_SECONDS), integers(-(2**63), 2**63 - 1)),
        st.one_of(st.sampled_from(NANOS), st.just(0)),
    )


def durations(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda seconds, nanos: cls(seconds=seconds, nanos=nanos),
        st.one_of(st.sampled_from(DURATION_SECONDS), st.integers(-1000, 1000)),
        st.sampled_from(NANOS),
    )


@dataclass(frozen=True)
class Shape:
    """How messages are drawn: ``strings`` picks each string field's strategy (a dictionary of
    known-good values for some fields reaches deeper than random text)."""

    strings: Strings = lambda field: any_text()
    max_depth: int = 4
    max_items: int = 4


def messages(descriptor: Descriptor, shape: Shape = Shape()) -> st.SearchStrategy[Message]:
    """Messages of type ``descriptor``, every field drawn by its type (see the module doc)."""
    return _message(descriptor, shape, 0)


@cache
def _message(descriptor: Descriptor, shape: Shape, depth: int) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return timestamps(cls)
    if descriptor.full_name == "google.protobuf.Duration":
        return durations(cls)
    if depth >= shape.max_depth:
        return st.builds(cls)
    real_oneofs = [o for o in descriptor.oneofs if not _synthetic(o.fields)]
    plain = [f for f in descriptor.fields if f.containing_oneof not in real_oneofs]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for oneof in real_oneofs:
            chosen = draw(st.sampled_from([None, *oneof.fields]))
            if chosen is not None:
                _set(message, chosen, draw(_value(chosen, shape, depth)))
        for field in plain:
            if draw(st.booleans()):
                _set(message, field, draw(_value(field, shape, depth)))
        return message

    return build()


def edited(
    template: Message, shape: Shape = Shape(), max_edits: int = 3
) -> st.SearchStrategy[Message]:
    """``template`` (a valid request, say) with up to ``max_edits`` fields anywhere in it set
    to a drawn value or cleared: near-valid requests reach further than random ones, and an
    unedited one reaches the end."""
    paths = _field_paths(template.DESCRIPTOR, shape.max_depth)
    if not paths:
        return st.just(template)

    @st.composite
    def edit(draw: st.DrawFn) -> Message:
        message = type(template)()
        message.CopyFrom(template)
        for _ in range(draw(st.integers(0, max_edits))):
            *parents, leaf = draw(st.sampled_from(paths))
            target = message
            for field in parents:
                if field.is_repeated:
                    items = getattr(target, field.name)
                    index = draw(st.integers(0, len(items)))
                    target = items[index] if index < len(items) else items.add()
                else:
                    target = getattr(target, field.name)
            if draw(st.integers(0, 4)) == 0:
                target.ClearField(leaf.name)
            else:
                target.ClearField(leaf.name)
                _set(target, leaf, draw(_value(leaf, shape, len(parents))))
        return message

    return edit()


@cache
def _field_paths(descriptor: Descriptor, depth: int) -> list[tuple[FieldDescriptor, ...]]:
    """Every field reachable from ``descriptor`` through at most ``depth`` messages (not
    through maps, timestamps or durations, which are drawn whole)."""
    out: list[tuple[FieldDescriptor, ...]] = []
    for field in descriptor.fields:
        out.append((field,))
        nested = field.message_type
        if (
            depth > 1
            and nested is not None
            and not nested.GetOptions().map_entry
            and nested.full_name not in ("google.protobuf.Timestamp", "google.protobuf.Duration")
        ):
            out += [(field, *path) for path in _field_paths(nested, depth - 1)]
    return out


def _synthetic(fields: Sequence[FieldDescriptor]) -> bool:
    """A proto3 ``optional`` field's own oneof (``_name``), which is no real choice."""
    oneof = fields[0].containing_oneof if len(fields) == 1 else None
    return oneof is not None and oneof.name == f"_{fields[0].name}"


@cache
def _value(field: FieldDescriptor, shape: Shape, depth: int) -> st.SearchStrategy[Any]:
    """A value for ``field``: a list for a repeated field, a dict for a map."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type
        keys = _single(entry.fields_by_name["key"], shape, depth + 1)
        values = _single(entry.fields_by_name["value"], shape, depth + 1)
        return st.dictionaries(keys, values, max_size=shape.max_items)
    single = _single(field, shape, depth)
    if field.is_repeated:
        return st.lists(single, max_size=shape.max_items)
    return single


def _single(field: FieldDescriptor, shape: Shape, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INT_RANGES:
        return integers(*INT_RANGES[kind])
    if kind == _F.TYPE_DOUBLE:
        return doubles()
    if kind == _F.TYPE_FLOAT:
        return doubles(width=32).map(lambda v: v if abs(v) <= 3.4e38 or math.isnan(v) else math.inf)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind == _F.TYPE_STRING:
        return shape.strings(field)
    if kind == _F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), huge_text().map(str.encode))
    if kind == _F.TYPE_ENUM:
        assert field.enum_type is not None
        known = sorted(field.enum_type.values_by_number)
        if field.enum_type.is_closed:
            return st.sampled_from(known)
        return st.one_of(st.sampled_from(known), integers(-(2**31), 2**31 - 1))
    return _message(field.message_type, shape, depth + 1)


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name) if field.is_repeated or field.message_type else None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)  # type: ignore[index]
            else:
                target[key] = item  # type: ignore[index]
    elif field.is_repeated:
        target.extend(value)  # type: ignore[union-attr]
    elif field.message_type is not None:
        target.SetInParent()  # type: ignore[union-attr]
        target.MergeFrom(value)  # type: ignore[union-attr]
    else:
        setattr(message, field.name, value)


# Byte-level damage. A tag for field 1 with a length of 2^32-1; an 11-byte varint (at most 10
# are allowed); a field with wire type 7 (none exists); an unknown field 1000 (kept, ignored);
# a group start without its end.
_POISON = (
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x08" + b"\xff" * 10 + b"\x01",
    b"\xff\xff\xff\xff\x0f",
    b"\xc0\x3e\x01",
    b"\x0b",
    b"\x0a\x02\xc3\x28",  # field 1 as length-delimited, holding invalid UTF-8
)


def mutated(payloads: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Serialized messages broken by one to four random edits."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(payloads))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data)))
            edit = draw(st.sampled_from(("truncate", "flip", "append", "insert", "cut", "poison")))
            if edit == "truncate":
                del data[at:]
            elif edit == "flip" and at < len(data):
                data[at] ^= draw(st.integers(1, 255))
            elif edit == "append":
                data += draw(st.binary(min_size=1, max_size=16))
            elif edit == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif edit == "cut":
                del data[at : at + draw(st.integers(1, 8))]
            else:
                data[at:at] = draw(st.sampled_from(_POISON))
        return bytes(data)

    return mutate()


def random_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=256), st.sampled_from(_POISON))
