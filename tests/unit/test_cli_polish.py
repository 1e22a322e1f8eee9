"""``--version``; ``health`` of all three services; ``--json`` errors as JSON on stderr; colour
and the spinner on a terminal only: a real terminal (a pty) gets them, a pipe gets plain text.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from switchboard_cli import __version__
from tests.fakes.cli_servers import cli, serving, tls_env

ESC = "\x1b"


def _closed_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@asynccontextmanager
async def health_servers(*statuses: int) -> AsyncIterator[list[str]]:
    """One fake server per status, answering the standard health check with it."""
    async with AsyncExitStack() as stack:
        addresses = []
        for status in statuses:
            servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # not in the stubs
            address = await stack.enter_async_context(
                serving(health_pb2_grpc.add_HealthServicer_to_server, servicer)
            )
            await servicer.set("", status)
            addresses.append(address)
        yield addresses


def _targets(router: str, catalog: str, metering: str) -> list[str]:
    return ["--router", router, "--catalog", catalog, "--metering", metering]


async def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("--version") == 0
    assert capsys.readouterr().out == f"switchboard {__version__}\n"
    assert __version__ and __version__[0].isdigit()


async def test_health_without_a_service_checks_all_three(
    capsys: pytest.CaptureFixture[str],
) -> None:
    serving_status = health_pb2.HealthCheckResponse.SERVING
    async with health_servers(serving_status, serving_status, serving_status) as addresses:
        assert await cli("health", *_targets(*addresses)) == 0
    router, catalog, metering = addresses
    assert capsys.readouterr().out.splitlines() == [
        f"router at {router}: SERVING",
        f"catalog at {catalog}: SERVING",
        f"metering at {metering}: SERVING",
    ]


async def test_health_of_all_reports_each_and_fails_if_one_is_not_serving(
    capsys: pytest.CaptureFixture[str],
) -> None:
    statuses = (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    closed = _closed_address()
    async with health_servers(*statuses) as (router, catalog):
        assert await cli("health", *_targets(router, catalog, closed)) == 1
        captured = capsys.readouterr()
        assert captured.out.splitlines() == [
            f"router at {router}: SERVING",
            f"catalog at {catalog}: NOT_SERVING",
            f"metering at {closed}: UNREACHABLE",
        ]
        assert f"cannot reach the metering at {closed}" in captured.err
        assert await cli("health", "--json", *_targets(router, catalog, closed)) == 1
    captured = capsys.readouterr()
    reports = json.loads(captured.out)
    assert [(r["service"], r["status"]) for r in reports] == [
        ("router", "SERVING"),
        ("catalog", "NOT_SERVING"),
        ("metering", "UNREACHABLE"),
    ]
    assert "error" not in reports[0] and closed in reports[2]["error"]
    assert captured.err == ""


async def test_json_errors_are_json_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    closed = _closed_address()
    assert await cli("--json", "--router", closed, "health", "router") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    error = json.loads(captured.err)["error"]
    assert error["code"] == "UNAVAILABLE" and error["service"] == "router"
    assert error["address"] == closed and error["exit_code"] == 1
    assert f"cannot reach the router at {closed}" in error["message"]

    assert await cli("models", "--json") == 2  # a usage error: no action
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["code"] == "USAGE" and error["exit_code"] == 2
    assert "ACTION" in error["message"] and error["usage"].startswith("usage: switchboard models")

    assert await cli("chat", "switchboard/demo", "hi", "--json", "--router", closed) == 2
    error = json.loads(capsys.readouterr().err)["error"]
    assert "API key" in error["message"] and error["exit_code"] == 2

    assert await cli("models") == 2  # without --json, argparse's own text
    assert capsys.readouterr().err.startswith("usage: switchboard models")


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return {**env, **tls_env(), "TERM": "xterm-256color", "COLUMNS": "200"}


def _run_piped(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard_cli", *argv],
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def _run_on_terminal(*argv: str) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; its exit code and output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchboard_cli", *argv],
        env=_cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def test_no_escape_codes_when_piped() -> None:
    closed = _closed_address()
    done = _run_piped("health", *_targets(closed, closed, closed))
    assert done.returncode == 1
    assert done.stdout.count("UNREACHABLE") == 3
    assert ESC not in done.stdout and ESC not in done.stderr
    failed = _run_piped("--router", closed, "health", "router")
    assert failed.returncode == 1
    assert failed.stderr.startswith("switchboard: error: cannot reach the router")
    assert ESC not in failed.stderr and failed.stdout == ""


def test_colour_and_spinner_on_a_terminal() -> None:
    closed = _closed_address()
    code, shown = _run_on_terminal("--router", closed, "health", "router")
    assert code == 1
    assert ESC in shown  # the red error, and the spinner's cursor handling
    assert "\x1b[?25l" in shown  # the spinner hides the cursor while it spins ...
    assert "\x1b[?25h" in shown  # ... and shows it again
    assert "cannot reach the router" in shown
    code, shown = _run_on_terminal("--json", "--router", closed, "health", "router")
    assert code == 1
    assert ESC not in shown  # JSON stays plain, even on a terminal
    assert json.loads(shown.strip())["error"]["code"] == "UNAVAILABLE"


async def test_statuses_are_coloured_on_a_terminal_only() -> None:
    statuses = (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    async with health_servers(*statuses) as (router, catalog):
        argv = ("health", *_targets(router, catalog, _closed_address()))
        code, shown = await asyncio.to_thread(_run_on_terminal, *argv)
        piped = await asyncio.to_thread(_run_piped, *argv)
    assert code == piped.returncode == 1
    assert f"router at {router}: \x1b[1;32mSERVING\x1b[0m" in shown
    assert f"catalog at {catalog}: \x1b[1;31mNOT_SERVING\x1b[0m" in shown
    assert piped.stdout.splitlines()[:2] == [
        f"router at {router}: SERVING",
        f"catalog at {catalog}: NOT_SERVING",
    ]
