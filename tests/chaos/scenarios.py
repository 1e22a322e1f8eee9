"""The chaos table's scenarios: one network fault on one of the stack's seven links each.

A link is one TCP path between two parts of the stack; the runner puts a
:class:`~tests.faults.proxy.FaultProxy` on every link and breaks one per scenario. Some
scenarios also do something an operator does at any time while the fault lasts (an
``action``), because the fault's effect shows only then:

- ``key-change``: change the limits of a key no load request uses (metering announces the
  change; a router must not forget its other keys because of it);
- ``add-model``: add a model through the catalog's admin API (how long until the router can
  route it once the link is back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tests.faults.proxy import Mode

Link = Literal[
    "router-upstream",
    "router-metering",
    "router-catalog",
    "router-redis",
    "metering-redis",
    "metering-postgres",
    "catalog-postgres",
]
LINKS: tuple[Link, ...] = (
    "router-upstream",
    "router-metering",
    "router-catalog",
    "router-redis",
    "metering-redis",
    "metering-postgres",
    "catalog-postgres",
)
Action = Literal["", "key-change", "add-model"]


@dataclass(frozen=True)
class Scenario:
    link: Link
    mode: Mode
    latency: float = 0.0  # seconds, for "latency"
    bytes_per_second: int = 0  # for "bandwidth"
    action: Action = ""

    @property
    def name(self) -> str:
        detail = ""
        if self.mode == "latency":
            detail = f"-{round(self.latency * 1000)}ms"
        elif self.mode == "bandwidth":
            detail = f"-{self.bytes_per_second}Bps"
        return f"{self.link}-{self.mode}{detail}"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("router-redis", "blackhole"),
    Scenario("router-redis", "refuse"),
    Scenario("router-redis", "latency", latency=0.3),
    Scenario("router-metering", "blackhole", action="key-change"),
    Scenario("router-metering", "refuse", action="key-change"),
    Scenario("router-metering", "reset"),
    Scenario("router-catalog", "blackhole", action="add-model"),
    Scenario("router-catalog", "refuse", action="add-model"),
    Scenario("router-upstream", "blackhole"),
    Scenario("router-upstream", "reset"),
    Scenario("router-upstream", "latency", latency=0.3),
    Scenario("router-upstream", "bandwidth", bytes_per_second=2000),
    Scenario("metering-redis", "blackhole"),
    Scenario("metering-redis", "refuse"),
    Scenario("metering-postgres", "blackhole"),
    Scenario("metering-postgres", "refuse"),
    Scenario("catalog-postgres", "blackhole"),
    Scenario("catalog-postgres", "refuse"),
)


def select(only: list[str] | None) -> list[Scenario]:
    """The scenarios whose name contains any of ``only`` (all of them when empty)."""
    if not only:
        return list(SCENARIOS)
    chosen = [s for s in SCENARIOS if any(part in s.name for part in only)]
    if not chosen:
        names = ", ".join(s.name for s in SCENARIOS)
        raise SystemExit(f"no scenario matches {only}; the scenarios are: {names}")
    return chosen
