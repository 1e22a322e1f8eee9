"""Errors from other Switchboard services rebuilt as domain errors, by a declared table."""

from __future__ import annotations

import grpc
import pytest

# Loaded on purpose: its UpstreamError is an UNAVAILABLE subclass that must not be picked.
import switchboard_router.providers.base  # noqa: F401
from switchboard_core.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SwitchboardError,
    Unavailable,
    from_rpc_error,
)


def _failed(code: grpc.StatusCode, details: str = "nope") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
    ],
)
def test_a_code_is_rebuilt_as_its_domain_error(
    code: grpc.StatusCode, kind: type[SwitchboardError]
) -> None:
    rebuilt = from_rpc_error(_failed(code))
    assert type(rebuilt) is kind
    assert rebuilt.code == code


def test_codes_without_their_own_error_become_unavailable() -> None:
    # The callee's field violations are not this caller's: never INVALID_ARGUMENT.
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED):
        rebuilt = from_rpc_error(_failed(code))
        assert type(rebuilt) is Unavailable
        assert rebuilt.reason == "UPSTREAM_SERVICE_ERROR"


def test_every_domain_error_but_invalid_argument_is_in_the_table() -> None:
    """The table, not ``__subclasses__()``: other modules' subclasses (the router's
    ``UpstreamError`` is UNAVAILABLE too) must not be picked by import order."""
    for cls in SwitchboardError.__subclasses__():
        if cls is InvalidArgument or cls.__module__ != "switchboard_core.errors":
            continue
        assert type(from_rpc_error(_failed(cls.code))) is cls, cls.__name__
