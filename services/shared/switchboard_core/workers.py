"""Several processes of one service on one machine (``SWITCHBOARD_WORKERS``): every core used.

A Python process runs its event loop on one core. ``SWITCHBOARD_WORKERS=N`` (an integer from 1
to :data:`MAX_WORKERS`, or ``auto``: one per core this process may use, its CPU affinity capped
by its cgroup's CPU quota) makes the service's entry point a small supervisor that starts N
workers of the same service and serves only their metrics. The workers bind the same gRPC,
HTTP-edge and health ports with ``SO_REUSEPORT``: the kernel spreads incoming *connections*
over them (a long-lived HTTP/2 channel stays on the worker that accepted it, so clients
spread their load over several channels). The supervisor
serves ``/metrics`` on the service's ``SWITCHBOARD_METRICS_PORT``: every worker's, merged with
a ``worker`` label (:mod:`switchboard_core.worker_metrics`), so Prometheus scrapes one port per
service as before; worker *i* serves its own on ``SWITCHBOARD_METRICS_PORT +
METRICS_PORT_STRIDE * (i + 1)`` (:meth:`Worker.metrics_port`), for debugging one process. The
default is 1: the service runs in the entry point's own process, exactly as without this
module, and serves its metrics on ``SWITCHBOARD_METRICS_PORT`` itself. On Kubernetes a pod
runs one process and the HorizontalPodAutoscaler adds pods; this is the same idea for one
machine (``make run``, the container).

Choices, and why:

- Fresh interpreters (``subprocess``: fork and exec of ``python -m <service>``), started before
  anything imports gRPC: gRPC's C core does not survive ``fork`` without its fork support, and
  a fresh interpreter shares no event loop, thread or socket with its supervisor. The
  supervisor imports neither gRPC nor the service's code.
- A worker that exits unexpectedly stops them all (the others drain within the grace period)
  and the supervisor exits non-zero, with the worker's exit status. No restarts in here: the
  process manager above (Compose ``restart:``, systemd, Kubernetes) restarts with backoff and
  counts restarts where operators look, and a crashing worker is not hidden behind a loop of
  silent restarts; metering's sweep settles what the dead worker held.
- The supervisor logs at ``SWITCHBOARD_LOG_LEVEL``, as its workers do, and binds the metrics
  port before it starts a worker: a port in use fails the start (status 1), not a scrape.
- SIGTERM and SIGINT are forwarded to every worker, which drain as a single process does
  (:meth:`switchboard_core.server.GrpcServer.run_until_signal`); the supervisor waits the
  grace period plus :data:`STOP_MARGIN_SECONDS` for their cleanup, then kills what is left.
- Each worker dies with its supervisor (Linux ``PR_SET_PDEATHSIG``): a supervisor killed with
  SIGKILL forwards nothing, and orphaned workers would keep serving the port.
- One Prometheus endpoint per worker rather than ``prometheus_client``'s multiprocess mode:
  that mode changes what every gauge means (a pid label, or a mode chosen per gauge), cannot
  serve callback gauges (``set_function``) and writes every update to a memory-mapped file;
  per-worker registries keep each metric as it is, per-process figures (event-loop lag) stay
  per process, and the supervisor's merge labels each sample with its worker.

What must differ per worker already does: the router's id (heartbeats, in-flight records,
reservation holders: :func:`switchboard_core.liveness.new_router_id`) and metering's outbox
consumer name both hold the process id. The router's spool directory is deliberately shared:
routers on one host lease its entries (:mod:`switchboard_router.spool`), so what a crashed
worker left is replayed by the others at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from switchboard_core.config import ConfigError, EnvReader, read_log_level

if TYPE_CHECKING:  # aiohttp: imported by a supervisor only, once it serves metrics
    from switchboard_core.worker_metrics import MetricsGateway

log = logging.getLogger(__name__)

WORKERS_VAR = "SWITCHBOARD_WORKERS"
# Set by the supervisor in each worker's environment (a process started with them is a worker).
INDEX_VAR = "SWITCHBOARD_WORKER_INDEX"
COUNT_VAR = "SWITCHBOARD_WORKER_COUNT"
AUTO = "auto"
MAX_WORKERS = 64
# The supervisor serves /metrics on SWITCHBOARD_METRICS_PORT and worker i on that + 100 (i + 1):
# the services' default metrics ports are adjacent (9091-9093), so "+ i" would land a router
# worker on the catalog's port; with 100, router workers end in 91, metering's in 93.
METRICS_PORT_STRIDE = 100
METRICS_PORT_VAR = "SWITCHBOARD_METRICS_PORT"
# The services' default SWITCHBOARD_METRICS_PORT (DEFAULT_METRICS_PORT of their config modules,
# which a supervisor does not import: they import gRPC); a test holds the two equal.
DEFAULT_METRICS_PORTS = {"router": 9091, "metering": 9093}
# ServerConfig's default SWITCHBOARD_SHUTDOWN_GRACE_SECONDS (the workers' drain).
DEFAULT_GRACE_SECONDS = 10.0
# Past the grace period: the workers' cleanup (pools, clients, last spans) before SIGKILL.
STOP_MARGIN_SECONDS = 5.0
POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Worker:
    """This process's place among its service's workers (the only one by default)."""

    index: int = 0
    count: int = 1

    @property
    def shares_ports(self) -> bool:
        """Whether the service's ports are bound with SO_REUSEPORT (more than one worker)."""
        return self.count > 1

    def metrics_port(self, base: int) -> int:
        """This process's Prometheus port: ``base`` alone; one of several workers, ``base`` +
        :data:`METRICS_PORT_STRIDE` * (index + 1), ``base`` being the supervisor's (0 stays
        0: any free port). Raises ValueError past 65535."""
        if base == 0 or not self.shares_ports:
            return base
        port = base + METRICS_PORT_STRIDE * (self.index + 1)
        if port > 65535:
            raise ValueError(
                f"SWITCHBOARD_METRICS_PORT {base}: worker {self.index}'s metrics port {port}"
                " is past 65535 (fewer workers or a lower port)"
            )
        return port

    def environment(self) -> dict[str, str]:
        return {INDEX_VAR: str(self.index), COUNT_VAR: str(self.count)}


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where the supervisor serves its workers' merged metrics (the service's own port)."""

    host: str
    port: int


@dataclass(frozen=True)
class Plan:
    """What the entry point does: serve as ``worker``, or (``children`` > 0) supervise,
    logging at ``log_level`` and serving ``metrics``."""

    worker: Worker
    children: int
    grace_seconds: float
    log_level: str = "INFO"
    metrics: MetricsEndpoint | None = None


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_file_cores(text: str, period_text: str | None = None) -> float | None:
    """Cores a CFS quota grants: cgroup v2's ``cpu.max`` (``"<quota> <period>"`` or
    ``"max <period>"``), or cgroup v1's ``cpu.cfs_quota_us`` with ``period_text`` its
    ``cpu.cfs_period_us`` (quota ``-1``: none). None: no quota, or unreadable."""
    fields = text.split()
    if period_text is not None:
        fields = [fields[0] if fields else "", period_text.strip()]
    if len(fields) != 2 or fields[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_quota_cores(root: Path = CGROUP_ROOT, own: str | None = None) -> float | None:
    """The CPU time this process's cgroup may use, in cores (a container's ``--cpus``, a
    Kubernetes CPU limit), or None without a quota. ``own``: the process's cgroup v2 path
    (default: read from ``/proc/self/cgroup``); a container sees its own cgroup at ``root``."""
    if own is None:
        lines = (_read(Path("/proc/self/cgroup")) or "").splitlines()
        own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    for directory in dict.fromkeys((root / own.lstrip("/"), root)):  # v2: own cgroup, then root
        text = _read(directory / "cpu.max")
        if text is not None:
            return _quota_file_cores(text)
    quota = _read(root / "cpu" / "cpu.cfs_quota_us")  # cgroup v1
    period = _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _quota_file_cores(quota, period)


def available_cores() -> int:
    """The cores this process may use: its CPU affinity (a container's cpuset), capped by
    its cgroup's CPU quota rounded up (``docker run --cpus 1.5``: 2), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota_cores()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def read_workers(reader: EnvReader) -> int:
    """``SWITCHBOARD_WORKERS``: 1 to :data:`MAX_WORKERS`, or ``auto`` (one per core, at most
    :data:`MAX_WORKERS`); 1 when unset."""
    raw = reader.str(WORKERS_VAR, "1").strip().lower()
    if raw == AUTO:
        return min(available_cores(), MAX_WORKERS)
    if not raw.isdigit():
        reader.problems.append(f"{WORKERS_VAR}: expected an integer or {AUTO!r}, got {raw!r}")
        return 1
    count = int(raw)
    if not 1 <= count <= MAX_WORKERS:
        reader.problems.append(f"{WORKERS_VAR}: must be between 1 and {MAX_WORKERS} (or {AUTO})")
        return 1
    return count


def read_worker(reader: EnvReader) -> Worker | None:
    """The worker this process is when a supervisor started it; None otherwise."""
    if not reader.env.get(INDEX_VAR):
        return None
    count = reader.int(COUNT_VAR, 1, min_value=1, max_value=MAX_WORKERS)
    index = reader.int(INDEX_VAR, 0, min_value=0, max_value=MAX_WORKERS - 1)
    if index >= count:
        reader.problems.append(f"{INDEX_VAR}: must be below {COUNT_VAR} ({count})")
        return None
    return Worker(index, count)


def read_metrics_endpoint(reader: EnvReader, service: str, count: int) -> MetricsEndpoint:
    """The supervisor's metrics port (the service's default when unset), checked so that
    every one of ``count`` workers' ports is below 65536."""
    port = reader.int(METRICS_PORT_VAR, DEFAULT_METRICS_PORTS.get(service, 0), max_value=65535)
    last = port + METRICS_PORT_STRIDE * count
    if port and last > 65535:
        reader.problems.append(
            f"{METRICS_PORT_VAR}: {count} workers would serve metrics up to port {last}, past"
            " 65535 (fewer workers or a lower port)"
        )
    return MetricsEndpoint(reader.str("SWITCHBOARD_HOST", "127.0.0.1"), port)


def plan(env: Mapping[str, str] | None = None, service: str = "") -> Plan:
    """The entry point's plan from the environment; ConfigError names every bad setting.
    ``service`` names the default metrics port of a supervisor."""
    reader = EnvReader(env)
    worker = read_worker(reader)
    count = read_workers(reader)
    grace = reader.float("SWITCHBOARD_SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE_SECONDS)
    if worker is None and count > 1:  # a supervisor: its own settings, checked before a start
        level = read_log_level(reader)
        metrics = read_metrics_endpoint(reader, service, count)
        reader.finish()
        return Plan(Worker(), count, grace, level, metrics)
    reader.finish()
    if worker is not None:  # started by a supervisor: serve, never supervise again
        return Plan(worker, 0, grace)
    return Plan(Worker(), 0, grace)


def serve_or_supervise(service: str, serve: Callable[[Worker], int]) -> int:
    """The entry point of ``python -m switchboard_<service>``: ``serve`` in this process, or
    supervise ``SWITCHBOARD_WORKERS`` workers of the same module. Returns the exit status."""
    try:
        chosen = plan(service=service)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if chosen.children:
        from switchboard_core.logs import configure  # no gRPC behind it

        configure(service, chosen.log_level)
        supervisor = Supervisor(
            f"switchboard_{service}",
            chosen.children,
            chosen.grace_seconds,
            metrics=chosen.metrics,
        )
        return supervisor.run()
    return serve(chosen.worker)


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when ``parent`` (this
    thread) dies; None where ``prctl`` is missing (not Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the signal was armed
            os._exit(1)

    return arm


class Supervisor:
    """Starts ``count`` workers of ``module`` and watches them (see the module docstring)."""

    def __init__(
        self,
        module: str,
        count: int,
        grace_seconds: float,
        *,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] = (),
        metrics: MetricsEndpoint | None = None,
    ) -> None:
        self.module = module
        self.count = count
        self.grace_seconds = grace_seconds
        self._env = dict(os.environ if env is None else env)
        self._argv = list(argv)
        self._metrics = metrics
        self._signalled = 0
        self.children: list[subprocess.Popen[bytes]] = []
        self.metrics_socket: socket.socket | None = None
        self.gateway: MetricsGateway | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signalled = signum

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            status = self._bind_metrics()
            if status == 0:
                status = self._start()
            if status == 0:
                status = self._serve_metrics()
            if status == 0:
                status = self._watch()
            stopped = self._stop()
            return status or stopped
        finally:
            if self.gateway is not None:
                self.gateway.stop()
            if self.metrics_socket is not None:
                self.metrics_socket.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def worker_metrics_ports(self, base: int) -> list[int]:
        return [Worker(index, self.count).metrics_port(base) for index in range(self.count)]

    def _bind_metrics(self) -> int:
        """Bind the metrics port before any worker starts (a port in use fails the start) and
        give the workers the bound port (port 0: the one picked) to count theirs from."""
        if self._metrics is None:
            return 0
        host, port = self._metrics.host, self._metrics.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.metrics_socket = socket.create_server((host, port), family=family)
        except OSError as error:
            log.error("metrics port not bound", extra={"port": port, "error": str(error)})
            return 1
        self._env[METRICS_PORT_VAR] = str(self.metrics_socket.getsockname()[1])
        return 0

    def _serve_metrics(self) -> int:
        """Serve the merged metrics (a thread: started after the workers, so no thread runs
        while ``preexec_fn`` does)."""
        if self.metrics_socket is None:
            return 0
        from switchboard_core.worker_metrics import MetricsGateway

        base = self.metrics_socket.getsockname()[1]
        gateway = MetricsGateway(self.metrics_socket, self.worker_metrics_ports(base))
        try:
            gateway.start()
        except Exception as error:
            log.error("metrics not served", extra={"error": repr(error)})
            return 1
        self.gateway = gateway
        self.metrics_socket = None  # the gateway's now (it closes it)
        gateway.set_alive(sum(child.poll() is None for child in self.children))
        log.info(
            "serving the workers' metrics",
            extra={"metrics_port": base, "worker_metrics_ports": gateway.targets},
        )
        return 0

    def _start(self) -> int:
        arm = _die_with_parent(os.getpid())
        for index in range(self.count):
            if self._signalled:
                return 0
            env = {**self._env, **Worker(index, self.count).environment()}
            try:
                child = subprocess.Popen(  # preexec_fn: safe, no thread runs yet
                    [sys.executable, "-m", self.module, *self._argv], env=env, preexec_fn=arm
                )
            except OSError as error:
                log.error("worker did not start", extra={"worker": index, "error": str(error)})
                return 1
            self.children.append(child)
        log.info(
            "workers started",
            extra={"workers": self.count, "pids": [c.pid for c in self.children]},
        )
        return 0

    def _watch(self) -> int:
        """Until a signal (0) or a worker's exit (its status; 1 when it was 0 or a signal)."""
        while not self._signalled:
            for index, child in enumerate(self.children):
                status = child.poll()
                if status is not None:
                    log.error(
                        "worker exited; stopping the others",
                        extra={"worker": index, "pid": child.pid, "status": status},
                    )
                    self._count_alive()
                    return status if status > 0 else 1
            time.sleep(POLL_SECONDS)
        log.info("stopping workers", extra={"signal": signal.Signals(self._signalled).name})
        return 0

    def _stop(self) -> int:
        """SIGTERM to every running worker, each waited for until the grace period and the
        margin have passed, then killed. Returns 1 when one did not stop cleanly, else 0."""
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds + STOP_MARGIN_SECONDS
        failed = 0
        for index, child in enumerate(self.children):
            try:
                status = child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop in time; killed", extra={"worker": index})
                child.kill()
                status = child.wait()
            if status not in (0, -signal.SIGTERM):
                failed = 1
            self._count_alive()
        return failed

    def _count_alive(self) -> None:
        if self.gateway is not None:
            self.gateway.set_alive(sum(child.poll() is None for child in self.children))
