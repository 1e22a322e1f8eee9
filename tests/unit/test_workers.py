"""SWITCHBOARD_WORKERS: its parsing and bounds, each worker's ports, and the supervisor's
promises (a worker's death stops the rest with a failing status; SIGTERM stops them all; its
/metrics is every worker's, merged with a worker label, within a bound whatever a worker does;
it imports no gRPC)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from switchboard_catalog.__main__ import warn_about_workers
from switchboard_core import workers as workers_module
from switchboard_core.config import ConfigError
from switchboard_core.server import server_options
from switchboard_core.worker_metrics import MetricsGateway, merge, parse, render
from switchboard_core.workers import (
    COUNT_VAR,
    DEFAULT_METRICS_PORTS,
    INDEX_VAR,
    MAX_WORKERS,
    METRICS_PORT_STRIDE,
    METRICS_PORT_VAR,
    MetricsEndpoint,
    Supervisor,
    Worker,
    available_cores,
    cpu_quota_cores,
    plan,
)
from switchboard_metering.config import MeteringConfig
from switchboard_router.config import RouterConfig
from tests.secure import tls_env


@pytest.mark.parametrize(
    ("value", "children"), [(None, 0), ("1", 0), ("2", 2), (" 3 ", 3), ("64", 64)]
)
def test_the_setting_is_a_count_and_one_means_no_supervisor(
    value: str | None, children: int
) -> None:
    env = {} if value is None else {"SWITCHBOARD_WORKERS": value}
    assert plan(env).children == children
    assert plan(env).worker == Worker()


def test_auto_is_one_worker_per_available_core() -> None:
    cores = min(available_cores(), MAX_WORKERS)
    assert plan({"SWITCHBOARD_WORKERS": "AUTO"}).children == (cores if cores > 1 else 0)


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5", "auto2"])
def test_a_bad_count_is_a_config_error_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="SWITCHBOARD_WORKERS"):
        plan({"SWITCHBOARD_WORKERS": value})


def test_a_worker_never_supervises_again() -> None:
    env = {"SWITCHBOARD_WORKERS": "auto", INDEX_VAR: "1", COUNT_VAR: "4"}
    chosen = plan(env)
    assert (chosen.children, chosen.worker) == (0, Worker(1, 4))
    assert chosen.worker.shares_ports


@pytest.mark.parametrize(("index", "count"), [("4", "4"), ("-1", "2"), ("0", "65")])
def test_a_bad_worker_index_is_a_config_error(index: str, count: str) -> None:
    with pytest.raises(ConfigError, match="SWITCHBOARD_WORKER_"):
        plan({INDEX_VAR: index, COUNT_VAR: count})


def test_each_worker_has_its_own_metrics_port_past_the_supervisors_and_a_lone_one_keeps_it() -> (
    None
):
    ports = {Worker(i, 3).metrics_port(9091) for i in range(3)}
    assert ports == {9091 + METRICS_PORT_STRIDE * n for n in (1, 2, 3)}
    # Not the supervisor's port (9091), nor the other services' defaults, nor metering's
    # workers' ports.
    metering = {Worker(i, MAX_WORKERS).metrics_port(9093) for i in range(MAX_WORKERS)}
    routers = {Worker(i, MAX_WORKERS).metrics_port(9091) for i in range(MAX_WORKERS)}
    assert not routers & (metering | {9091, 9092, 9093, 50051, 50052, 50053, 8080})
    assert Worker().metrics_port(9091) == 9091
    assert not Worker().shares_ports
    assert Worker(5, 8).metrics_port(0) == 0
    with pytest.raises(ValueError, match="65535"):
        Worker(63, 64).metrics_port(60000)


def test_the_supervisors_default_metrics_ports_are_the_services() -> None:
    urls = {"DATABASE_URL": "postgresql://db/x", "REDIS_URL": "redis://redis:6379/0"}
    router = RouterConfig.from_env({**tls_env("router"), **urls})
    metering = MeteringConfig.from_env({**tls_env("metering"), **urls})
    assert {
        "router": router.server.metrics_port,
        "metering": metering.server.metrics_port,
    } == DEFAULT_METRICS_PORTS


def test_a_supervisor_reads_its_log_level_and_metrics_port() -> None:
    chosen = plan({"SWITCHBOARD_WORKERS": "2", "SWITCHBOARD_LOG_LEVEL": "warning"}, "router")
    assert chosen.log_level == "WARNING"
    assert chosen.metrics == MetricsEndpoint("127.0.0.1", 9091)
    env = {"SWITCHBOARD_WORKERS": "2", "SWITCHBOARD_HOST": "0.0.0.0", METRICS_PORT_VAR: "7000"}
    assert plan(env, "metering").metrics == MetricsEndpoint("0.0.0.0", 7000)
    # A lone process leaves these to its service's config (same checks, same messages).
    assert plan({"SWITCHBOARD_LOG_LEVEL": "loud"}, "router").metrics is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SWITCHBOARD_LOG_LEVEL": "loud"}, "SWITCHBOARD_LOG_LEVEL"),
        ({METRICS_PORT_VAR: "70000"}, METRICS_PORT_VAR),
        ({METRICS_PORT_VAR: "65000"}, "past 65535"),  # worker 63 would be at 71,500
    ],
)
def test_a_supervisors_bad_setting_is_a_config_error_naming_it(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        plan({"SWITCHBOARD_WORKERS": "64", **env}, "router")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _after_start(supervisor: Supervisor, action: object) -> threading.Thread:
    """Run ``action(supervisor)`` in a thread once every worker process exists."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + 10
        while len(supervisor.children) < supervisor.count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        action(supervisor)  # type: ignore[operator]

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


# A stand-in worker that serves until a signal: the standard library's HTTP server.
STUB = ("http.server", ["0", "--bind", "127.0.0.1"])


def test_a_dead_worker_stops_the_others_and_the_supervisor_fails() -> None:
    supervisor = Supervisor(STUB[0], 2, grace_seconds=2, argv=STUB[1])
    _after_start(supervisor, lambda s: s.children[0].kill())
    began = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - began < 5
    assert not any(_alive(child.pid) for child in supervisor.children)
    assert supervisor.children[1].returncode == -signal.SIGTERM  # told to stop, not killed


def test_sigterm_to_the_supervisor_stops_every_worker() -> None:
    supervisor = Supervisor(STUB[0], 3, grace_seconds=2, argv=STUB[1])
    _after_start(supervisor, lambda _: os.kill(os.getpid(), signal.SIGTERM))
    assert supervisor.run() == 0
    assert [child.returncode for child in supervisor.children] == [-signal.SIGTERM] * 3
    assert signal.getsignal(signal.SIGTERM) is not supervisor._on_signal  # handlers restored


def test_a_worker_that_exits_with_a_status_passes_it_on() -> None:
    supervisor = Supervisor("ast", 2, grace_seconds=2, argv=["--no-such-option"])
    assert supervisor.run() == 2  # argparse's status for a bad option, as a bad setting's


@pytest.mark.parametrize("shared", [False, True])
async def test_workers_share_the_grpc_port_and_a_lone_server_keeps_it_to_itself(
    shared: bool,
) -> None:
    first = grpc.aio.server(options=server_options(shared))
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    second = grpc.aio.server(options=server_options(shared))
    try:
        if shared:
            assert second.add_insecure_port(f"127.0.0.1:{port}") == port
        else:  # gRPC's own default on Linux would have let the second bind
            with pytest.raises(RuntimeError):
                second.add_insecure_port(f"127.0.0.1:{port}")
    finally:
        await second.stop(None)
        await first.stop(None)


# The supervisor's /metrics (switchboard_core.worker_metrics).

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


def exposition_rules_broken(text: str) -> list[str]:
    """What breaks the text format's rules in ``text``: a second HELP or TYPE for a name, or a
    sample outside its family's block (a family's samples come together, after its TYPE)."""
    problems: list[str] = []
    helps: set[str] = set()
    typed: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            problems += [f"second HELP for {name}"] if name in helps else []
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            problems += [f"second TYPE for {name}"] if name in typed else []
            typed[name], current = kind, name
        elif line:
            sample = line.split("{")[0].split(" ")[0]
            suffixes = SUFFIXES.get(typed.get(current, ""), ())
            allowed = {current, *(current + suffix for suffix in suffixes)}
            if current == "" or sample not in allowed:
                problems.append(f"{sample} outside its family's block (in {current!r})")
    return problems


def worker_registry(handled: float, lag: float) -> CollectorRegistry:
    """One worker's registry: a labelled counter, a histogram and a gauge."""
    registry = CollectorRegistry()
    counter = Counter("app_handled_total", "Calls.", ["method"], registry=registry)
    counter.labels("A").inc(handled)
    histogram = Histogram("app_seconds", "Time.", buckets=(0.1, 1.0), registry=registry)
    histogram.observe(0.5)
    Gauge("app_lag_seconds", "Lag.", registry=registry).set(lag)
    return registry


def test_merged_families_keep_their_types_and_label_every_sample_with_its_worker() -> None:
    scraped = [
        (index, parse(generate_latest(worker_registry(n, n / 10)).decode()))
        for index, n in enumerate((3, 4))
    ]
    text = render(CollectorRegistry(), merge(scraped)).decode()
    assert exposition_rules_broken(text) == []
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {families[n].type for n in ("app_handled", "app_seconds", "app_lag_seconds")} == {
        "counter",
        "histogram",
        "gauge",
    }
    handled = {s.labels["worker"]: s.value for s in families["app_handled"].samples}
    assert handled == {"0": 3, "1": 4}
    assert all(s.labels["method"] == "A" for s in families["app_handled"].samples)
    buckets = [s for s in families["app_seconds"].samples if s.name == "app_seconds_bucket"]
    assert {(s.labels["worker"], s.labels["le"]) for s in buckets} == {
        (w, le) for w in "01" for le in ("0.1", "1.0", "+Inf")
    }
    assert all("worker" in s.labels for f in families.values() for s in f.samples)


def test_a_family_of_another_type_under_a_merged_name_is_left_out() -> None:
    first = parse("# TYPE x gauge\nx 1\n")
    second = parse("# TYPE x_total counter\nx_total 2\n")  # a counter named x
    [family] = merge([(0, first), (1, second)])
    assert (family.type, [s.value for s in family.samples]) == ("gauge", [1])


class Scrapes:
    """A collector that counts how often its registry is scraped."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> list[Metric]:
        self.count += 1
        return []


class FakeWorkers:
    """Real /metrics servers (prometheus_client's, as the workers run) and one port that
    accepts connections and never answers."""

    def __init__(self) -> None:
        self.scrapes = Scrapes()
        registries = [worker_registry(n, 0.0) for n in (5, 7)]
        registries[0].register(self.scrapes)
        self.servers = [start_http_server(0, "127.0.0.1", r)[0] for r in registries]
        self.silent = socket.create_server(("127.0.0.1", 0))  # listens; never accepts

    @property
    def ports(self) -> list[int]:
        served = [int(server.server_address[1]) for server in self.servers]
        return [*served, self.silent.getsockname()[1]]

    def close(self) -> None:
        stopping = [threading.Thread(target=server.shutdown) for server in self.servers]
        for thread in stopping:  # each waits out its server's 0.5 s poll: together, once
            thread.start()
        for thread, server in zip(stopping, self.servers, strict=True):
            thread.join(5)
            server.server_close()
        self.silent.close()


@pytest.fixture
def fake_workers() -> Iterator[FakeWorkers]:
    workers = FakeWorkers()
    yield workers
    workers.close()


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(response.read().decode())


def test_a_worker_that_never_answers_is_left_out_within_the_bound_and_counted(
    fake_workers: FakeWorkers,
) -> None:
    gateway = MetricsGateway(
        socket.create_server(("127.0.0.1", 0)), fake_workers.ports, timeout=0.3
    )
    gateway.start()
    try:
        gateway.set_alive(3)
        began = time.monotonic()
        text = get(gateway.port)
        took = time.monotonic() - began
        second = get(gateway.port)
    finally:
        gateway.stop()
    assert 0.3 <= took < 1.5, took  # waited out the silent worker's bound, no longer
    assert exposition_rules_broken(text) == []
    families = {f.name: f for f in text_string_to_metric_families(text)}
    handled = {s.labels["worker"]: s.value for s in families["app_handled"].samples}
    assert handled == {"0": 5, "1": 7}  # the silent worker (2) is left out
    assert families["switchboard_workers"].samples[0].value == 3
    assert families["switchboard_workers_alive"].samples[0].value == 3
    failures = {
        s.labels["worker"]: s.value
        for s in families["switchboard_worker_scrape_failures"].samples
        if s.name.endswith("_total")
    }
    assert failures == {"0": 0, "1": 0, "2": 1}
    assert 'switchboard_worker_scrape_failures_total{worker="2"} 2.0' in second


def test_scrapes_that_arrive_together_ask_each_worker_once(fake_workers: FakeWorkers) -> None:
    gateway = MetricsGateway(
        socket.create_server(("127.0.0.1", 0)), fake_workers.ports, timeout=0.8
    )
    gateway.start()
    try:
        answers: list[str] = []
        askers = [
            threading.Thread(target=lambda: answers.append(get(gateway.port))) for _ in range(4)
        ]
        for asker in askers:  # all within the silent worker's 0.8 s
            asker.start()
        for asker in askers:
            asker.join(5)
    finally:
        gateway.stop()
    assert len(answers) == 4
    assert fake_workers.scrapes.count == 1
    assert len(set(answers)) == 1


def test_the_supervisor_and_its_metrics_import_no_grpc() -> None:
    probe = (
        "import sys, switchboard_core.workers, switchboard_core.worker_metrics;"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpc_health')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_supervisor_serves_metrics_on_its_port_and_tells_the_workers_theirs() -> None:
    supervisor = Supervisor(
        STUB[0], 2, grace_seconds=2, argv=STUB[1], metrics=MetricsEndpoint("127.0.0.1", 0)
    )
    scraped: list[str] = []

    def scrape_then_stop(s: Supervisor) -> None:
        deadline = time.monotonic() + 5
        while s.gateway is None and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            scraped.append(get(int(s._env[METRICS_PORT_VAR])))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    _after_start(supervisor, scrape_then_stop)
    assert supervisor.run() == 0
    base = int(supervisor._env[METRICS_PORT_VAR])  # the bound port, as the workers were told
    assert base != 0
    assert supervisor.worker_metrics_ports(base) == [base + 100, base + 200]
    families = {f.name: f for f in text_string_to_metric_families(scraped[0])}
    assert families["switchboard_workers_alive"].samples[0].value == 2
    # The stand-in workers serve no /metrics there: both left out, counted, and no hang.
    failed = [
        s.labels["worker"]
        for s in families["switchboard_worker_scrape_failures"].samples
        if s.name.endswith("_total") and s.value == 1
    ]
    assert failed == ["0", "1"]


def test_a_metrics_port_in_use_fails_the_start_before_any_worker() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        endpoint = MetricsEndpoint("127.0.0.1", taken.getsockname()[1])
        supervisor = Supervisor(STUB[0], 2, grace_seconds=2, argv=STUB[1], metrics=endpoint)
        assert supervisor.run() == 1
    assert supervisor.children == []


@pytest.mark.parametrize(("value", "warned"), [(None, False), ("1", False), ("4", True)])
def test_the_catalog_warns_that_it_runs_one_process(
    value: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    env = {} if value is None else {"SWITCHBOARD_WORKERS": value}
    with caplog.at_level(logging.WARNING, logger="switchboard_catalog"):
        warn_about_workers(env)
    assert any("catalog runs one process" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no quota
        ({"cpu.max": "150000 100000\n"}, 1.5),  # docker run --cpus 1.5
        ({"kubepods/pod1/cpu.max": "50000 100000\n", "cpu.max": "max 100000"}, 0.5),  # own first
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu.max": "garbage"}, None),
        ({}, None),  # no cgroup files at all (not Linux, or not mounted)
    ],
)
def test_cpu_quota_is_read_from_cgroup_v2_then_v1(
    tmp_path: Path, files: dict[str, str], cores: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota_cores(tmp_path, own="/kubepods/pod1") == cores


def test_auto_rounds_a_cpu_quota_up_and_never_exceeds_the_affinity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    affinity = os.sched_getaffinity(0)
    for quota, expected in ((0.5, 1), (1.5, min(2, len(affinity))), (None, len(affinity))):
        monkeypatch.setattr(workers_module, "cpu_quota_cores", lambda quota=quota: quota)
        assert available_cores() == expected
