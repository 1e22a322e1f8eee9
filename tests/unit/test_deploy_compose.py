"""docker-compose.yml: valid for Compose v2 and v1, and in step with `make run` and the image.

The schemas are vendored under deploy/schemas/ (README.md there names their sources): the
Compose specification's current schema, and the one Compose v1's last release (1.29.2)
validates with, which refuses a top-level ``name``. The file must also start the processes
``make run`` starts (switchboard_devstack) on the same ports, publish only the router, expose
in the Dockerfile every port it serves, and scrape every metrics port from Prometheus.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from switchboard_devstack import __main__ as devstack
from switchboard_devstack.stack import Ports

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "deploy/schemas"
# The schema each Compose generation validates with: (file, JSON Schema draft it declares).
COMPOSE_SCHEMAS = {
    "compose-spec.json": jsonschema.Draft202012Validator,
    "compose-spec-v1.29.json": jsonschema.Draft201909Validator,
}
SERVICES = ("router", "catalog", "metering")
PROCESSES = {f"switchboard_{name}": name for name in (*SERVICES, "demo")}
PORT_SETTINGS = {
    "SWITCHBOARD_GRPC_PORT",
    "SWITCHBOARD_METRICS_PORT",
    "SWITCHBOARD_HTTP_PORT",
    "SWITCHBOARD_DEMO_PORT",
}


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def environment(service: str) -> dict[str, str]:
    env: dict[str, Any] = compose()["services"][service].get("environment", {})
    return {name: "" if value is None else str(value) for name, value in env.items()}


def schema_errors(schema_file: str, document: Any) -> list[str]:
    validator_class = COMPOSE_SCHEMAS[schema_file]
    schema = json.loads((SCHEMAS / schema_file).read_text())
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


@pytest.mark.parametrize("schema_file", sorted(COMPOSE_SCHEMAS))
def test_compose_file_is_valid(schema_file: str) -> None:
    errors = schema_errors(schema_file, compose())
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("schema_file", sorted(COMPOSE_SCHEMAS))
def test_the_schemas_refuse_a_broken_file(schema_file: str) -> None:
    broken = compose()
    broken["services"]["router"]["ports"] = "50051"  # a string where a list belongs
    broken["services"]["router"]["restart_policy"] = "always"  # no such key
    assert len(schema_errors(schema_file, broken)) >= 2


def test_compose_v1_refuses_a_top_level_name() -> None:
    """Why the file has no `name:` (the issue's Compose v1 failure), checked on the schema."""
    named = {"name": "switchboard", **compose()}
    assert any("name" in error for error in schema_errors("compose-spec-v1.29.json", named))
    assert not schema_errors("compose-spec.json", named)


def test_vendored_schemas_are_the_recorded_files() -> None:
    import hashlib

    readme = (SCHEMAS / "README.md").read_text()
    for name in COMPOSE_SCHEMAS:
        digest = hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme, f"README.md does not record {name}'s sha256"
    assert "Apache License" in (SCHEMAS / "LICENSE").read_text()


def test_compose_starts_the_processes_make_run_starts() -> None:
    started = {}
    for name, service in compose()["services"].items():
        command = service.get("command", [])
        if command[:2] == ["python", "-m"] and command[2] in PROCESSES:
            started[command[2]] = name
    assert started == {module: name for module, name in PROCESSES.items()}
    assert environment("catalog")["SWITCHBOARD_CATALOG_IMPORT"] == devstack.IMPORT


def test_ports_match_make_run_and_the_dockerfile() -> None:
    ports = Ports()  # make run's defaults
    for name in SERVICES:
        env = environment(name)
        assert env["SWITCHBOARD_GRPC_PORT"] == str(getattr(ports, name))
        assert env["SWITCHBOARD_METRICS_PORT"] == str(getattr(ports, f"{name}_metrics"))
    assert environment("router")["SWITCHBOARD_HTTP_PORT"] == str(ports.router_http)
    assert environment("demo")["SWITCHBOARD_DEMO_PORT"] == str(ports.demo)
    served = {
        int(value)
        for name in (*SERVICES, "demo")
        for key, value in environment(name).items()
        if key in PORT_SETTINGS
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(port) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)
               for port in line.split()}  # fmt: skip
    assert served == exposed


def test_only_the_router_is_published_and_its_addresses_agree() -> None:
    services = compose()["services"]
    published = {
        name: sorted(service.get("ports", []))
        for name, service in services.items()
        if name in (*SERVICES, "demo", "postgres", "redis")
    }
    assert published == {
        "router": ["50051:50051", "8080:8080"],
        "catalog": [],
        "metering": [],
        "demo": [],
        "postgres": [],
        "redis": [],
    }
    for name in SERVICES:
        for key in ("SWITCHBOARD_CATALOG_ADDR", "SWITCHBOARD_METERING_ADDR"):
            address = environment(name).get(key)
            if address:
                target = key.split("_")[1].lower()
                assert address == f"{target}:{environment(target)['SWITCHBOARD_GRPC_PORT']}"


def test_header_host_commands_reach_published_ports_only() -> None:
    """The comment's commands run on the host unless they go through `docker compose exec`:
    those may use only the router, the one service the host can reach."""
    commands: list[str] = []
    for line in (ROOT / "docker-compose.yml").read_text().splitlines():
        if not line.startswith("#   "):
            continue
        text = re.split(r"\s{2,}", line[4:].strip())[0]  # a note may follow two spaces
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1] + text
        else:
            commands.append(text)
    host = [command for command in commands if not command.startswith("docker")]
    published = {int(port.split(":")[0]) for port in compose()["services"]["router"]["ports"]}
    checked = 0
    for command in host:
        words = shlex.split(command)
        if any(word.endswith("switchboard") for word in words):
            assert not {"--catalog", "--metering", "keys", "catalog"} & set(words), command
            checked += 1
        for port in re.findall(r"localhost:(\d+)", command):
            assert int(port) in published, command
            checked += 1
    assert checked >= 2


def test_prometheus_scrapes_every_metrics_port() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = {
        target for job in config["scrape_configs"] for static in job["static_configs"]
        for target in static["targets"]
    }  # fmt: skip
    wanted = {f"{name}:{environment(name)['SWITCHBOARD_METRICS_PORT']}" for name in SERVICES}
    assert targets == wanted
    volumes = compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_every_mounted_repository_path_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert (ROOT / volume.split(":")[0]).exists(), f"{name}: {volume}"
