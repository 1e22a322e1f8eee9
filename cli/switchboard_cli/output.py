"""Everything the CLI prints: text deltas, tables, notes on stderr and JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TextIO

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

PROG = "switchboard"


@dataclass
class Output:
    """Stdout for results, stderr for notes and errors; ``json`` switches results to JSON."""

    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def write(self, text: str) -> None:
        """Raw text, flushed at once (streamed deltas)."""
        self.out.write(text)
        self.out.flush()

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def write_note(self, text: str) -> None:
        """Raw text on stderr, flushed at once (streamed reasoning)."""
        self.err.write(text)
        self.err.flush()

    def fail(self, text: str) -> None:
        print(f"{PROG}: error: {text}", file=self.err, flush=True)

    def emit(self, value: Message | dict[str, Any] | list[Any], *, indent: int | None = 2) -> None:
        data = to_dict(value) if isinstance(value, Message) else value
        print(json.dumps(data, indent=indent), file=self.out, flush=True)

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        numeric: Collection[int] = (),
    ) -> None:
        """Aligned columns; columns listed in ``numeric`` are right-aligned."""
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        for row in [headers, *rows]:
            cells = [
                cell.rjust(width) if i in numeric else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            self.line("  ".join(cells).rstrip())


def to_dict(message: Message) -> dict[str, Any]:
    """Proto JSON with field names as in the .proto; money stays a string."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def format_time(ts: timestamp_pb2.Timestamp, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
    """UTC time of a timestamp, or "-" when it is unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime(pattern)


def enum_label(name: str, prefix: str) -> str:
    """``FINISH_REASON_STOP`` -> ``stop``."""
    return name.removeprefix(prefix).lower()
