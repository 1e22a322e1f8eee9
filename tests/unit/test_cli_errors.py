"""Error lines, unreachable services, argument errors and ``switchboard health``."""

from __future__ import annotations

import socket

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_cli.__main__ import main
from tests.fakes.cli_servers import abort, cli, rich_status, serving


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class FailingMetering(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, status: grpc.Status) -> None:
        self.status = status

    async def QueryUsage(
        self,
        request: metering_pb2.QueryUsageRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> metering_pb2.QueryUsageResponse:
        await abort(context, self.status)


async def _usage_error(status: grpc.Status) -> tuple[int, str]:
    servicer = FailingMetering(status)  # type: ignore[abstract]
    async with serving(
        metering_pb2_grpc.add_MeteringServiceServicer_to_server, servicer
    ) as address:
        code = await cli("--metering", address, "usage", "--key", "key_1")
    return code, address


async def test_violations_already_in_the_message_are_not_repeated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="key_id", description="unknown"),
            error_details_pb2.BadRequest.FieldViolation(field="bucket", description="bad"),
        ]
    )
    status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, "invalid request: key_id: unknown", bad)
    code, _ = await _usage_error(status)
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        "switchboard: error: INVALID_ARGUMENT: invalid request: key_id: unknown [bucket: bad]\n"
    )


async def test_error_info_reason_and_key_hint(capsys: pytest.CaptureFixture[str]) -> None:
    info = error_details_pb2.ErrorInfo(reason="API_KEY_REVOKED", domain="switchboard.dev")
    status = rich_status(grpc.StatusCode.UNAUTHENTICATED, "the key was revoked", info)
    code, _ = await _usage_error(status)
    err = capsys.readouterr().err
    assert code == 1
    assert "UNAUTHENTICATED: the key was revoked [reason API_KEY_REVOKED]" in err
    # An admin command against metering: the operator key is what to check.
    assert "SWITCHBOARD_ADMIN_KEY" in err


async def test_quota_failure_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject="key_1", description="no credit")
        ]
    )
    code, _ = await _usage_error(rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "out", quota))
    assert code == 1
    assert "RESOURCE_EXHAUSTED: out [key_1: no credit]" in capsys.readouterr().err


def test_unreachable_service_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    code = main(["--catalog", address, "--admin-key", "sk-sb-op-test", "models", "list"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot reach the catalog at {address}" in err
    assert err.count("\n") == 1


async def test_help_and_usage_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("--help") == 0
    assert "chat" in capsys.readouterr().out
    assert await cli("models") == 2
    assert await cli("usage", "--key", "k", "--since", "soon") == 2
    assert "--since" in capsys.readouterr().err


async def test_health(capsys: pytest.CaptureFixture[str]) -> None:
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing in the stubs
    async with serving(health_pb2_grpc.add_HealthServicer_to_server, servicer) as address:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await cli("--router", address, "health", "router") == 0
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await cli("health", "router", "--router", address) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"router at {address}: SERVING", f"router at {address}: NOT_SERVING"]
