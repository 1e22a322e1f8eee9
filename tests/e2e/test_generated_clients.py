"""Clients generated from protos/ by ``make clients`` against the running stack, over TLS with
the development CA: the Node/TypeScript client (protoc-gen-es + Connect's gRPC transport), the
Python wheel (switchboard-client) and the Go example each stream a completion, ask for a whole
one, and decode the ErrorInfo and BadRequest details of a refused request."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from switchboard.metering.v1 import metering_pb2
from switchboard_devstack.stack import Stack
from tests.generated_clients import (
    CLIENTS,
    GO_PLUGINS,
    RUN_TIMEOUT_SECONDS,
    build_wheel,
    example_env,
    generate_clients,
    json_lines,
    run,
    wheel_venv,
)

pytestmark = pytest.mark.e2e

GO_MODULE = "github.com/switchboard-llm/switchboard/clients/go"
# Debian's Go sources of the example's imports (golang-google-grpc-dev,
# golang-google-protobuf-dev, golang-google-genproto-dev): the build is offline.
GOCODE = Path("/usr/share/gocode")
GO_IMPORTS = ("google.golang.org/grpc", "google.golang.org/protobuf", "google.golang.org/genproto")
# Only in github.com/golang/protobuf 1.3 (grpc-go's codec goes through it).
OLD_GOLANG_PROTOBUF = "github.com/golang/protobuf/proto/table_unmarshal.go"


@pytest.fixture(scope="module")
def generated() -> None:
    generate_clients()


@pytest.fixture(scope="module")
def env(stack: Stack, api_key: metering_pb2.CreateApiKeyResponse) -> dict[str, str]:
    return example_env(stack.address("router"), stack.pki.ca, api_key.secret)


def _assert_calls(calls: dict[str, dict[str, object]]) -> None:
    assert "error" not in calls, calls
    streamed = calls["StreamCompletion"]
    assert str(streamed["generationId"]).startswith("gen-"), streamed
    assert streamed["text"] and int(str(streamed["completionTokens"])) > 0, streamed
    assert float(str(streamed["costUsd"])) >= 0
    whole = calls["CreateCompletion"]
    assert whole["text"] and whole["generationId"] != streamed["generationId"], whole
    refused = calls["CreateCompletion(no messages)"]
    assert refused["code"] in {"INVALID_ARGUMENT", "InvalidArgument"}, refused
    assert refused["reason"] == "INVALID_ARGUMENT", refused
    violations = refused["violations"]
    assert isinstance(violations, list) and violations, refused
    assert any(v["field"] == "messages" and v["description"] for v in violations), refused


@pytest.mark.usefixtures("generated")
def test_typescript_client_streams_and_decodes_error_details(env: dict[str, str]) -> None:
    typescript = CLIENTS / "typescript"
    run(["node_modules/.bin/tsc", "-p", "tsconfig.json"], cwd=typescript, timeout=180)
    output = run(
        ["node", "dist/example/complete.js"], cwd=typescript, env=env, timeout=RUN_TIMEOUT_SECONDS
    )
    _assert_calls(json_lines(output))


def test_python_wheel_streams_and_decodes_error_details(
    env: dict[str, str], tmp_path: Path
) -> None:
    python = wheel_venv(build_wheel(tmp_path / "wheel"), tmp_path / "venv")
    output = run(
        [str(python), str(CLIENTS / "python" / "example" / "complete.py")],
        env=env,
        cwd=tmp_path,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    _assert_calls(json_lines(output))


@pytest.mark.usefixtures("generated")
def test_go_example_compiles_and_runs(env: dict[str, str], tmp_path: Path) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain: apt-get install golang-go (docs/CLIENTS.md#go)")
    plugins = [p for p in GO_PLUGINS if shutil.which(p) is None]
    if plugins:
        pytest.skip(f"no Go client was generated: apt-get install {' '.join(plugins)}")
    missing = [i for i in GO_IMPORTS if not (GOCODE / "src" / i).is_dir()]
    if missing:
        pytest.skip(f"Debian's Go sources of {', '.join(missing)} are not installed")
    if (GOCODE / "src" / OLD_GOLANG_PROTOBUF).exists():
        pytest.skip(
            "Debian's github.com/golang/protobuf is 1.3, which cannot decode today's generated"
            " messages: apt-get install golang-github-golang-protobuf-1-5-dev"
        )
    # GOPATH mode over Debian's sources: no module download. The build cache is Go's default
    # (~/.cache/go-build): a cold build takes about half a minute here, a warm one seconds.
    gopath = tmp_path / "gopath"
    link = gopath / "src" / GO_MODULE
    link.parent.mkdir(parents=True)
    link.symlink_to(CLIENTS / "go")
    go_env = {
        **env,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:{GOCODE}",
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    binary = tmp_path / "example"
    run([go, "build", "-o", str(binary), "./example"], cwd=link, env=go_env, timeout=300)
    output = run([str(binary)], env=env, timeout=RUN_TIMEOUT_SECONDS)
    lines = output.splitlines()
    assert lines[0].startswith("generation gen-") and "tokens, $" in lines[0], output
    assert lines[1].startswith("whole: ") and len(lines[1]) > len("whole: "), output
    assert lines[2].startswith("InvalidArgument: "), output
    assert "  reason INVALID_ARGUMENT (switchboard.dev)" in lines, output
    assert any(line.startswith("  messages: ") for line in lines), output
