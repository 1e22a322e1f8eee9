"""Everything the CLI prints: text deltas, tables, notes on stderr and JSON.

Results go to stdout, notes and errors to stderr. With ``--json`` results are JSON, and so
are errors: one object on stderr, ``{"error": {"message": ..., "code": ..., ...}}``, so a
script reads stdout for results and stderr for what went wrong, as without ``--json``.

On a terminal (stderr's, for the spinner and errors; stdout's, for coloured statuses) the CLI
shows a spinner while it waits for a service and colours errors and statuses, with ``rich``;
piped or redirected, it writes plain text without a single escape code (``NO_COLOR`` turns
colour off on a terminal too).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TextIO

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.status import Status

PROG = "switchboard"
# The colour of each serving status on a terminal.
STATUS_STYLES = {"SERVING": "bold green", "UNREACHABLE": "bold red", "NOT_SERVING": "bold red"}


def _console(stream: TextIO) -> Console:
    return Console(file=stream, highlight=False, soft_wrap=True, emoji=False)


@dataclass
class Output:
    """Stdout for results, stderr for notes and errors; ``json`` switches both to JSON."""

    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _spinner: Status | None = field(default=None, init=False, repr=False)

    def _terminal(self, stream: TextIO) -> Console | None:
        """A console for ``stream`` when it is a terminal (and not JSON output), else None."""
        if self.json:
            return None
        console = _console(stream)
        return console if console.is_terminal else None

    @contextmanager
    def waiting(self, text: str) -> Iterator[None]:
        """A spinner on stderr while the body runs, on a terminal only; it goes away at the
        first thing printed."""
        console = self._terminal(self.err)
        if console is None:
            yield
            return
        self._spinner = console.status(escape(text), spinner="dots")
        self._spinner.start()
        try:
            yield
        finally:
            self._stop_spinner()

    def stop_spinner(self) -> None:
        """No spinner from now on (before reading the terminal, say)."""
        self._stop_spinner()

    def _stop_spinner(self) -> None:
        spinner, self._spinner = self._spinner, None
        if spinner is not None:
            spinner.stop()

    def write(self, text: str) -> None:
        """Raw text, flushed at once (streamed deltas)."""
        self._stop_spinner()
        self.out.write(text)
        self.out.flush()

    def line(self, text: str = "") -> None:
        self._stop_spinner()
        print(text, file=self.out)

    def status_line(self, text: str, status: str) -> None:
        """``text`` then a serving status, coloured on a terminal."""
        self._stop_spinner()
        console = self._terminal(self.out)
        if console is None:
            print(f"{text}{status}", file=self.out)
            return
        style = STATUS_STYLES.get(status, "bold yellow")
        console.print(f"{escape(text)}[{style}]{escape(status)}[/]")

    def note(self, text: str) -> None:
        self._stop_spinner()
        print(text, file=self.err, flush=True)

    def write_note(self, text: str) -> None:
        """Raw text on stderr, flushed at once (streamed reasoning)."""
        self._stop_spinner()
        self.err.write(text)
        self.err.flush()

    def fail(self, text: str, **details: object) -> None:
        """The error: one line, red on a terminal, or with ``json`` one JSON object holding
        ``message`` and ``details`` (``code``, ``service``, ``address``...)."""
        self._stop_spinner()
        if self.json:
            error = {"message": text, **{k: v for k, v in details.items() if v is not None}}
            print(json.dumps({"error": error}), file=self.err, flush=True)
            return
        console = self._terminal(self.err)
        if console is None:
            print(f"{PROG}: error: {text}", file=self.err, flush=True)
            return
        console.print(f"[bold red]{PROG}: error:[/] {escape(text)}")

    def emit(self, value: Message | dict[str, Any] | list[Any], *, indent: int | None = 2) -> None:
        self._stop_spinner()
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
