"""One markdown table row per scenario, from its calls and the moments the fault began and
cleared.

Columns:

- ``requests (ok)``: streams started during the whole scenario (warm-up, fault, recovery) and
  how many ended with their final message;
- ``errors``: client-visible errors by gRPC code and ``ErrorInfo`` reason (a worker pauses
  0.1 s after each, so a flood of fast refusals counts once per worker per 0.1 s);
  ``capped`` ones hit the client's deadline;
- ``max wait``: of the streams started during the fault (none when every worker was held
  up by a stream of before), the longest a client waited for a first message or an error;
- ``TTFT p50/p99``: time to first token of the streams started during the fault that got one;
- ``max hold``: of the streams in flight during the fault, the longest time between the last
  token and the end of the stream (final message or error);
- ``recovery``: after the fault cleared, how long errors went on (the end of the last failed
  stream); ``never`` when no stream started after it succeeded;
- ``ledger``: ``exact`` when every told generation is in the ledger as told, then the cut
  streams billed (tokens billed / words delivered) and rows no client saw start;
- ``held``: reservations of the limited key still in Redis after the ledger settled;
- ``notes``: the never-seen key probed during the fault, the scenario's action, tracebacks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tests.chaos.ledger import LedgerCheck
from tests.chaos.load import Call

HEADER = (
    "| scenario | requests (ok) | errors | max wait s | TTFT p50/p99 s | max hold s"
    " | recovery s | ledger | held | notes |"
)
RULE = "|" + "---|" * 10


@dataclass
class Marks:
    fault: float  # the fault began
    clear: float  # the link was back to pass
    stopped: float = 0.0  # no more streams were started


@dataclass
class Outcome:
    name: str
    calls: list[Call]
    marks: Marks
    ledger: LedgerCheck
    notes: list[str] = field(default_factory=list)
    tracebacks: dict[str, int] = field(default_factory=dict)
    exited: dict[str, int] = field(default_factory=dict)  # services that died: exit codes

    @property
    def during(self) -> list[Call]:
        """The streams started while the fault lasted."""
        return [c for c in self.calls if self.marks.fault <= c.start < self.marks.clear]

    @property
    def in_fault(self) -> list[Call]:
        """The streams in flight at some moment of the fault."""
        m = self.marks
        return [c for c in self.calls if c.start < m.clear and (c.end or m.stopped) >= m.fault]

    def errors(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for c in self.calls:
            if c.failed:
                found["capped" if c.capped else f"{c.code}/{c.reason}" if c.reason else c.code] += 1
        return found

    def max_wait(self) -> tuple[float, bool] | None:
        """None when no stream started during the fault (every worker was held up)."""
        waits = [
            ((c.first or c.end or self.marks.stopped) - c.start, c.capped and c.first is None)
            for c in self.during
        ]
        return max(waits, default=None)

    def ttft(self) -> tuple[float, float] | None:
        times = sorted(c.first_token - c.start for c in self.during if c.first_token is not None)
        if not times:
            return None
        return percentile(times, 0.5), percentile(times, 0.99)

    def max_hold(self) -> tuple[float, bool]:
        holds = [
            (c.end - c.last_token, c.capped)
            for c in self.in_fault
            if c.last_token is not None and c.end is not None
        ]
        return max(holds, default=(0.0, False))

    def recovery(self) -> float | None:
        """Seconds after the clear until the last error, None if nothing worked after it."""
        clear = self.marks.clear
        last_failure = max(
            (c.end for c in self.calls if c.failed and c.end is not None and c.end > clear),
            default=clear,
        )
        if not any(
            c.ok and c.start >= clear and c.end and c.end >= last_failure for c in self.calls
        ):
            return None
        return last_failure - clear

    def problems(self) -> list[str]:
        """The notes, then what went wrong with the services themselves."""
        found = list(self.notes)
        found += [f"{name} EXITED ({code})" for name, code in self.exited.items()]
        found += [f"{n} traceback(s) from {name}" for name, n in self.tracebacks.items()]
        return found

    def row(self) -> str:
        ok = sum(1 for c in self.calls if c.ok)
        errors = ", ".join(f"{name}: {n}" for name, n in sorted(self.errors().items())) or "-"
        wait = self.max_wait()
        ttft = self.ttft()
        hold, hold_capped = self.max_hold()
        recovery = self.recovery()
        cells = [
            self.name,
            f"{len(self.calls)} ({ok})",
            errors,
            "- (none started)"
            if wait is None
            else f"{wait[0]:.1f}" + (" capped" if wait[1] else ""),
            f"{ttft[0]:.2f}/{ttft[1]:.2f}" if ttft else "-",
            f"{hold:.1f}" + (" capped" if hold_capped else ""),
            "never" if recovery is None else f"{recovery:.1f}",
            ledger_cell(self.ledger),
            str(self.ledger.held),
            "; ".join(self.problems()) or "-",
        ]
        return "| " + " | ".join(cells) + " |"


def ledger_cell(check: LedgerCheck) -> str:
    parts = [f"exact {check.told}" if check.exact else f"NOT EXACT of {check.told}"]
    if check.missing:
        parts.append(f"{check.missing} missing")
    if check.wrong:
        parts.append(f"{check.wrong} differ (e.g. {check.example})")
    if check.cut:
        parts.append(
            f"cut {check.cut_billed}/{check.cut} billed"
            + (f" {check.cut_tokens} tok for {check.cut_words} words" if check.cut_billed else "")
        )
    if check.unseen:
        parts.append(f"{check.unseen} unseen")
    return ", ".join(parts)


def percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
