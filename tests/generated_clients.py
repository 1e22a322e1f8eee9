"""The generated clients of ``make clients`` (buf.gen.yaml), built as a user builds them.

Generation runs once per test process (``make client-code``: buf, protoc-gen-es from
clients/typescript's lockfile, grpcio-tools and, where Debian's protoc-gen-go is installed,
the Go client; without it the Go test skips). The Python wheel is
installed into a new virtualenv that sees only the wheel and the project's third-party
packages, never gen/python or the services.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "clients"
GENERATE_TIMEOUT_SECONDS = 300.0
BUILD_TIMEOUT_SECONDS = 180.0
RUN_TIMEOUT_SECONDS = 90.0
GO_PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc")

_generated = False


def run(
    command: list[str],
    *,
    timeout: float,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``command``; its stdout, or an AssertionError carrying its output."""
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )
    return done.stdout


def generate_clients() -> None:
    """``make client-code``, once per test process."""
    global _generated
    if _generated:
        return
    run(["make", "--no-print-directory", "client-code"], timeout=GENERATE_TIMEOUT_SECONDS)
    _generated = True


def build_wheel(out: Path) -> Path:
    """The switchboard-client wheel, built from clients/python into ``out``."""
    generate_clients()
    shutil.rmtree(CLIENTS / "python" / "build", ignore_errors=True)  # stale modules
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(CLIENTS / "python"),
        ],
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    (wheel,) = out.glob("switchboard_client-*.whl")
    return wheel


def wheel_venv(wheel: Path, where: Path) -> Path:
    """A new virtualenv holding ``wheel``; its Python. The wheel's dependencies (grpcio,
    protobuf, googleapis-common-protos) come from this process's site-packages through a
    .pth line: that directory's own .pth files (gen/python, the services) are not read."""
    run([sys.executable, "-m", "venv", "--without-pip", str(where)], timeout=60)
    python = where / "bin" / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        timeout=30,
    ).strip()
    Path(purelib, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def example_env(address: str, ca: Path, api_key: str) -> dict[str, str]:
    """The environment of the example programs: the router's address, its CA, an API key."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SWITCHBOARD_ROUTER_ADDR": address,
        "SWITCHBOARD_TLS_CA": str(ca),
        "SWITCHBOARD_API_KEY": api_key,
    }


def json_lines(output: str) -> dict[str, dict[str, object]]:
    """An example's output lines by their "call"."""
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    return {str(line.get("call", "error")): line for line in lines}
