"""The rows ``make bench-ledger`` prints: a rate, each party's CPU per unit, a ratio to a floor."""

from __future__ import annotations

from dataclasses import dataclass

from bench.ingest import Cpu

PARTIES = ("python", "postgres", "redis")
HEADER = (
    f"  {'':<52}{'n':>8}{'s':>8}{'per s':>10}{'x floor':>8}"
    f"{'python':>9}{'postgres':>9}{'redis':>9}\n"
    f"  {'':<52}{'':>8}{'':>8}{'':>10}{'':>8}{'CPU µs per unit':>27}"
)


@dataclass
class Figure:
    """One measured row: ``count`` units in ``seconds``, with each party's CPU seconds."""

    name: str
    count: int
    seconds: float
    cpu: dict[str, float | None]
    check: str = ""
    extra: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def per_unit(self, party: str) -> float | None:
        used = self.cpu.get(party)
        return None if used is None else used * 1e6 / self.count

    def row(self, floor: Figure | None) -> str:
        ratio = f"{self.rate / floor.rate:>8.2f}" if floor is not None else f"{'':>8}"
        cells = "".join(
            f"{value:>9.1f}" if value is not None else f"{'-':>9}"
            for value in (self.per_unit(party) for party in PARTIES)
        )
        return (
            f"  {self.name:<52}{self.count:>8}{self.seconds:>8.2f}{self.rate:>10,.0f}"
            f"{ratio}{cells}  {self.extra}"
        )


def cpu_parts(before: Cpu, after: Cpu) -> dict[str, float | None]:
    """CPU seconds between two samples, by party (None: not measurable here)."""
    python, postgres, redis_s = after.since(before)
    return {"python": python, "postgres": postgres, "redis": redis_s}
