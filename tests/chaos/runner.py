"""Run one chaos scenario against a real stack with a fault proxy on each of its seven links.

:class:`Rig` owns the proxies (one per link, for the whole run, so their ports stay put) and
starts a fresh stack for every scenario: a fault can leave half-open connections, reconnect
backoff and stale caches behind, and restarting costs a few seconds, so no scenario's numbers
carry the last one's damage. The stack's services reach each other, Redis, Postgres and the
demo upstream only through the proxies (``Stack.service_env``); the runner's own admin calls
and ledger reads go direct.

A scenario: start the stack, make the keys, run the load (``warmup`` s), break the link
(``fault`` s; its action one second in, and a never-seen key tried then), clear it, keep the
load running until it recovered (no stream of before the clear still open, the last 3 s all
successes; at least ``recovery_min`` s, at most ``recovery_max`` s), stop it, then check the
ledger and the limited key's reservations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as redis

from switchboard.catalog.v1 import catalog_pb2_grpc
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2_grpc
from switchboard_devstack.stack import Ports, Stack
from tests.chaos.ledger import check, wait_released
from tests.chaos.load import Call, Load, ask, stream_once
from tests.chaos.report import Marks, Outcome
from tests.chaos.scenarios import LINKS, Link, Scenario
from tests.e2e.support import add_demo_model, limited_key
from tests.faults.links import tcp_target, through
from tests.faults.proxy import FaultProxy
from tests.secure import test_pki


@dataclass
class Settings:
    fault: float = 20.0
    warmup: float = 4.0
    recovery_min: float = 5.0
    recovery_max: float = 60.0
    deadline: float = 60.0  # every client call's deadline
    settle: float = 60.0  # the longest wait for the ledger
    workers: int = 16
    token_delay: float = 0.05  # the demo upstream's pause between tokens


@dataclass
class Rig:
    database_url: str
    redis_url: str
    prefix: str  # every Redis key of the run is under it
    log_root: Path
    settings: Settings = field(default_factory=Settings)
    ports: Ports = field(default_factory=Ports.free)
    proxies: dict[Link, FaultProxy] = field(default_factory=dict)
    _runs: int = 0

    def __post_init__(self) -> None:
        redis_at = tcp_target(self.redis_url, 6379)
        postgres_at = tcp_target(self.database_url, 5432)
        local = "127.0.0.1"
        targets: dict[Link, tuple[str, int]] = {
            "router-upstream": (local, self.ports.demo),
            "router-metering": (local, self.ports.metering),
            "router-catalog": (local, self.ports.catalog),
            "router-redis": redis_at,
            "metering-redis": redis_at,
            "metering-postgres": postgres_at,
            "catalog-postgres": postgres_at,
        }
        self.proxies = {link: FaultProxy(targets[link]).start() for link in LINKS}

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    def service_env(self) -> dict[str, dict[str, str]]:
        p = self.proxies
        return {
            "router": {
                "REDIS_URL": through(p["router-redis"], self.redis_url),
                "SWITCHBOARD_METERING_ADDR": p["router-metering"].address,
                "SWITCHBOARD_CATALOG_ADDR": p["router-catalog"].address,
            },
            "metering": {
                "REDIS_URL": through(p["metering-redis"], self.redis_url),
                "DATABASE_URL": through(p["metering-postgres"], self.database_url),
            },
            "catalog": {
                "DATABASE_URL": through(p["catalog-postgres"], self.database_url),
                # The seed points the demo provider here: the router's upstream link.
                "SWITCHBOARD_DEMO_BASE_URL": f"http://{p['router-upstream'].address}/v1",
            },
        }

    def stack(self, prefix: str, log_dir: Path) -> Stack:
        return Stack(
            self.database_url,
            self.redis_url,
            test_pki(),
            ports=self.ports,
            log_dir=log_dir,
            extra_env={
                "SWITCHBOARD_USAGE_STREAM": prefix + "usage",
                "SWITCHBOARD_BUDGET_PREFIX": prefix + "budget:",
                "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(self.settings.token_delay),
                "SWITCHBOARD_SHUTDOWN_GRACE_SECONDS": "5",
                # No retention: the short run shares the test session's database with tests
                # that record events dated years ago.
                "SWITCHBOARD_LEDGER_RETENTION_DAYS": "0",
            },
            service_env=self.service_env(),
        )

    async def run(self, scenario: Scenario) -> Outcome:
        self._runs += 1
        prefix = f"{self.prefix}{self._runs}:"
        log_dir = self.log_root / f"{self._runs:02d}-{scenario.name}"
        stack = self.stack(prefix, log_dir)
        try:
            await stack.start(timeout=90)
            outcome = await _Scenario(self, scenario, stack, prefix).run()
            outcome.exited = {
                name: code
                for name, proc in stack.processes.items()
                if (code := proc.poll()) is not None
            }
        finally:
            stack.stop()
            for proxy in self.proxies.values():  # drop what a blackhole left stalled
                proxy.set("reset")
                proxy.set("pass")
        outcome.tracebacks = tracebacks(log_dir)
        return outcome


def tracebacks(log_dir: Path) -> dict[str, int]:
    """Log lines with a traceback, by service and logger (a library's, like asyncpg's pool,
    tells a different story than an unhandled error of ours)."""
    found: Counter[str] = Counter()
    for log in sorted(log_dir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "Traceback" not in line:
                continue
            try:
                logger = str(json.loads(line).get("logger", "?"))
            except ValueError:
                logger = "?"
            found[f"{log.stem} {logger}"] += 1
    return dict(found)


@dataclass
class _Scenario:
    rig: Rig
    scenario: Scenario
    stack: Stack
    prefix: str
    notes: list[str] = field(default_factory=list)
    probes: list[Call] = field(default_factory=list)  # ledger-checked, not in the table

    async def run(self) -> Outcome:
        async with (
            self.stack.channel("metering") as m,
            self.stack.channel("catalog") as c,
            self.stack.channel("router", bearer="") as r,
        ):
            return await self._run(
                metering_pb2_grpc.MeteringServiceStub(m),
                catalog_pb2_grpc.CatalogServiceStub(c),
                router_pb2_grpc.RouterServiceStub(r),
            )

    async def _run(
        self,
        metering: metering_pb2_grpc.MeteringServiceAsyncStub,
        catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
        router: router_pb2_grpc.RouterServiceAsyncStub,
    ) -> Outcome:
        s, sc = self.rig.settings, self.scenario
        limits = metering_pb2.SpendLimits(total_usd="1000")
        limited = await limited_key(metering, "chaos-limited", limits)
        keys = {
            name: await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=name))
            for name in ("chaos-open", "chaos-fresh", "chaos-bystander", "chaos-probe")
        }
        load = Load(router, limited, keys["chaos-open"], workers=s.workers, deadline=s.deadline)
        load.start()
        await asyncio.sleep(s.warmup)
        loop = asyncio.get_running_loop()
        proxy = self.rig.proxies[sc.link]
        proxy.set(sc.mode, latency=sc.latency, bytes_per_second=sc.bytes_per_second)
        marks = Marks(fault=loop.time(), clear=0.0)
        await asyncio.sleep(min(1.0, s.fault / 2))
        sides = [asyncio.create_task(self._fresh(router, keys["chaos-fresh"]))]
        if sc.action == "key-change":
            await metering.SetKeyLimits(
                metering_pb2.SetKeyLimitsRequest(
                    key_id=keys["chaos-bystander"].api_key.id,
                    limits=metering_pb2.SpendLimits(daily_usd="5"),
                )
            )
            self.notes.append("an unused key's limits changed 1 s in")
        added: asyncio.Task[float | None] | None = None
        if sc.action == "add-model":
            model = await add_demo_model(catalog, f"chaos/added-{self.rig._runs}")
            added = asyncio.create_task(self._routable(router, keys["chaos-probe"], model, marks))
        await asyncio.sleep(marks.fault + s.fault - loop.time())
        proxy.set("pass")
        marks.clear = loop.time()
        await self._recover(load, marks, added)
        load.stop()
        marks.stopped = loop.time()
        await load.drain()
        await asyncio.gather(*sides)
        if added is not None:
            routable = added.result() if added.done() else None
            added.cancel()
            self.notes.append(
                "model added 1 s in: "
                + (
                    "never routable"
                    if routable is None
                    else f"routable {routable:+.1f} s after clear"
                )
            )
        key_ids = [limited.api_key.id, keys["chaos-open"].api_key.id]
        key_ids += [keys[n].api_key.id for n in ("chaos-fresh", "chaos-probe")]
        ledger = await check(self.rig.database_url, key_ids, load.calls + self.probes, s.settle)
        client = redis.Redis.from_url(self.rig.redis_url)
        try:
            budget = self.prefix + "budget:"
            ledger.held, ledger.held_after = await wait_released(
                client, budget, limited.api_key.id, 5.0
            )
        finally:
            await client.aclose()
        return Outcome(sc.name, load.calls, marks, ledger, self.notes)

    async def _recover(
        self, load: Load, marks: Marks, added: asyncio.Task[float | None] | None
    ) -> None:
        s = self.rig.settings
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.25)
            now = loop.time()
            if now - marks.clear >= s.recovery_max:
                self.notes.append(f"recovery window capped at {s.recovery_max:.0f} s")
                return
            if now - marks.clear < s.recovery_min or (added is not None and not added.done()):
                continue
            if any(c.start < marks.clear for c in load.pending()):
                continue
            recent = [c for c in load.calls if c.end is not None and c.end >= now - 3]
            if recent and all(c.ok for c in recent):
                return

    async def _fresh(
        self,
        router: router_pb2_grpc.RouterServiceAsyncStub,
        key: metering_pb2.CreateApiKeyResponse,
    ) -> None:
        """A key the router never saw, tried once during the fault."""
        loop = asyncio.get_running_loop()
        call = Call(limited=False, start=loop.time())
        await stream_once(router, key, ask(0), call, loop.time, self.rig.settings.deadline)
        self.probes.append(call)
        took = (call.end or loop.time()) - call.start
        what = "ok" if call.ok else (f"{call.code}/{call.reason}" if call.reason else call.code)
        self.notes.append(f"never-seen key: {what} in {took:.1f} s")

    async def _routable(
        self,
        router: router_pb2_grpc.RouterServiceAsyncStub,
        key: metering_pb2.CreateApiKeyResponse,
        model: str,
        marks: Marks,
    ) -> float | None:
        """Seconds after the clear until ``model`` streams (negative: during the fault)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while loop.time() - began < self.rig.settings.fault + self.rig.settings.recovery_max:
            call = Call(limited=False, start=loop.time())
            await stream_once(router, key, ask(1, model), call, loop.time, 10.0)
            if call.ok:
                self.probes.append(call)
                return (call.end or 0.0) - (marks.clear or loop.time())
            if call.generation_id:
                self.probes.append(call)  # started and cut: its row is checked too
            await asyncio.sleep(0.25)
        return None


async def cleanup_redis(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        names = [  # hash-tagged keys (Redis Cluster slots) start with "{"
            name
            for pattern in (prefix + "*", "{" + prefix + "*")
            async for name in client.scan_iter(match=pattern, count=1000)
        ]
        for start in range(0, len(names), 500):
            with contextlib.suppress(redis.RedisError):
                await client.delete(*names[start : start + 500])
    finally:
        await client.aclose()
