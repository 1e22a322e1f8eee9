"""The Grafana dashboard asks only for metrics, and labels, that the services export.

Every PromQL expression in deploy/grafana/dashboards/*.json is parsed (promql-parser, the
bindings of GreptimeDB's Rust PromQL parser: a syntax error fails too) for the metric names it
selects and the labels it filters and groups by; each name must be a series that a service's
Prometheus registry exposes (importing every module of the services fills the default
registry, as the processes do), with the ``_bucket``/``_sum``/``_count`` of histograms and the
``_total`` of counters. Labels must belong to the metrics the expression selects, or be
Prometheus's own (``le``, ``job``, ``instance``) or a target label deploy/prometheus.yml sets.
So renaming a metric or a label fails here instead of leaving an empty panel.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import socket
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from switchboard_core.worker_metrics import MetricsGateway

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
PROVISIONING = ROOT / "deploy/grafana/provisioning"
SERVICE_PACKAGES = (
    "switchboard_core",
    "switchboard_catalog",
    "switchboard_metering",
    "switchboard_router",
)
# Series Prometheus makes itself, not a service.
PROMETHEUS_SERIES = {"up"}
PROMETHEUS_LABELS = {"le", "job", "instance", "quantile"}
# The series Prometheus scrapes for one metric of each type (text format; the _created
# series of counters and histograms are left out: a panel has no use for them).
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
GRAFANA_DURATIONS = ("$__rate_interval", "$__interval", "$__range")


@cache
def exported() -> dict[str, frozenset[str]]:
    """Every series name the services' registries expose -> the labels it carries."""
    for package in SERVICE_PACKAGES:
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    names: dict[str, frozenset[str]] = {}
    # The worker supervisor's own families (switchboard_core.worker_metrics) live in a registry
    # of its own, served beside the workers' merged metrics.
    with socket.socket() as sock:
        supervisor = MetricsGateway(sock, [0]).registry
    # prometheus_client keeps no public list of a registry's collectors and their labels.
    collectors = set(REGISTRY._collector_to_names) | set(supervisor._collector_to_names)
    for collector in collectors:
        labels = frozenset(getattr(collector, "_labelnames", ()))
        for family in getattr(collector, "describe", collector.collect)():
            for suffix in SERIES_SUFFIXES.get(family.type, ("",)):
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def target_labels() -> set[str]:
    """Labels deploy/prometheus.yml adds to every series of a target."""
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    found: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            found |= set(static.get("labels", {}))
    return found


@dataclass
class Query:
    """What one PromQL expression asks Prometheus for."""

    # metric name -> the labels its matchers name
    selectors: dict[str, set[str]] = field(default_factory=dict)
    # labels in by/without and on/ignoring/group_left/group_right
    grouping: set[str] = field(default_factory=set)


def parse(expr: str) -> Query:
    """Parse ``expr`` (a syntax error raises ValueError) and collect what it selects."""
    for variable in GRAFANA_DURATIONS:  # Grafana fills these in before Prometheus sees them
        expr = expr.replace(variable, "5m")
    query = Query()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers} - {"__name__"}
            query.selectors.setdefault(node.name or "", set()).update(labels)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            query.grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                query.grouping.update(node.modifier.matching.labels)
            query.grouping.update(node.modifier.group_labels or [])
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return query


def prometheus_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every Prometheus query, rows' nested panels included."""
    found = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((panel["title"], target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            found.append((f"variable {variable['name']}", query))
    return found


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def test_the_expression_parser_finds_names_and_labels() -> None:
    query = parse(
        'histogram_quantile(0.9, sum by (le, provider) (rate(switchboard_x_bucket{a="b,c",'
        ' d!~"e"}[$__rate_interval]))) / on (provider) group_left (model) up offset 5m'
    )
    assert query.selectors == {"switchboard_x_bucket": {"a", "d"}, "up": set()}
    assert query.grouping == {"le", "provider", "model"}
    with pytest.raises(ValueError, match="parenthesis"):
        parse("sum(rate(switchboard_x_total[5m])")


def test_the_registries_hold_the_known_series() -> None:
    names = exported()
    assert "switchboard_router_time_to_first_token_seconds_bucket" in names
    assert "switchboard_usage_outbox_lag" in names  # metering
    assert "switchboard_catalog_watchers" in names  # catalog
    assert names["switchboard_grpc_server_handled_total"] == {
        "grpc_service",
        "grpc_method",
        "grpc_code",
    }
    assert "switchboard_no_such_metric_total" not in names
    assert "switchboard_router_generations" not in names  # a counter's series end in _total
    assert names["switchboard_router_time_to_first_token_seconds_bucket"] == {"provider", "le"}
    assert "process_cpu_seconds_total" in names  # the default collectors count too


def test_there_is_a_dashboard_with_the_issues_panels() -> None:
    assert DASHBOARDS, "no dashboard JSON under deploy/grafana/dashboards"
    exprs = " ".join(expr for path in DASHBOARDS for _, expr in prometheus_exprs(load(path)))
    for wanted in (
        "switchboard_grpc_server_handled_total",  # request rate, errors by code
        "switchboard_router_time_to_first_token_seconds_bucket",  # TTFT percentiles
        "switchboard_grpc_server_handling_seconds_bucket",  # latency percentiles
        "switchboard_gen_ai_tokens_total",  # tokens by provider
        "switchboard_usage_outbox_lag",  # outbox lag
        "switchboard_router_budget_admissions_total",  # budget refusals
    ):
        assert wanted in exprs


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_metric_and_label_in_the_dashboard_is_exported(path: Path) -> None:
    names = exported()
    extra_labels = PROMETHEUS_LABELS | target_labels()
    problems = []
    for title, expr in prometheus_exprs(load(path)):
        try:
            query = parse(expr)
        except ValueError as error:
            problems.append(f"{title}: not PromQL ({error}): {expr}")
            continue
        unknown = query.selectors.keys() - names.keys() - PROMETHEUS_SERIES
        problems += [f"{title}: no service exports {name!r}" for name in sorted(unknown)]
        for metric, labels in query.selectors.items():
            allowed = names.get(metric, frozenset()) | extra_labels
            problems += [f"{title}: {metric} has no label {label}" for label in labels - allowed]
        known = set().union(*(names.get(name, frozenset()) for name in query.selectors))
        for label in sorted(query.grouping - known - extra_labels):
            problems.append(f"{title}: no metric in the query has the label {label}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_the_dashboard_uses_the_provisioned_datasources(path: Path) -> None:
    provisioned = {
        source["uid"]: source["type"]
        for file in (PROVISIONING / "datasources").glob("*.yml")
        for source in yaml.safe_load(file.read_text())["datasources"]
    }
    dashboard = load(path)
    panels = list(dashboard["panels"])
    seen = set()
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        for holder in [panel, *panel.get("targets", [])]:
            source = holder.get("datasource")
            if isinstance(source, dict):
                assert provisioned.get(source["uid"]) == source["type"], panel["title"]
                seen.add(source["uid"])
    assert seen == set(provisioned)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40


def test_the_dashboards_are_provisioned_from_where_compose_mounts_them() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(
        volume.split(":")[:2]
        for volume in compose["services"]["grafana"]["volumes"]
        if volume.startswith("./")
    )
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((PROVISIONING / "dashboards/switchboard.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    folder, _, name = home.rpartition("/")
    assert folder == provider["options"]["path"]
    assert (ROOT / "deploy/grafana/dashboards" / name).is_file()
