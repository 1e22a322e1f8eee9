"""An upstream's refusal reads as the upstream's, not the gateway's: the message names the
provider and says it came from upstream, and the details keep the provider and its status."""

from __future__ import annotations

import grpc
import pytest

from switchboard_router.providers.base import (
    UpstreamBadRequest,
    UpstreamRateLimited,
    UpstreamUnavailable,
    error_for_status,
)


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (413, UpstreamBadRequest, grpc.StatusCode.INVALID_ARGUMENT),
        (429, UpstreamRateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (503, UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_an_upstream_status_names_the_provider_as_upstream(
    status: int, kind: type[Exception], code: grpc.StatusCode
) -> None:
    error = error_for_status(status, "request entity too large", provider_id="switchboard")
    assert type(error) is kind
    assert error.code == code
    assert str(error) == (
        f"upstream provider switchboard answered HTTP {status}: request entity too large"
    )
    assert error.metadata == {"provider": "switchboard", "http_status": str(status)}
    assert error.reason.startswith("UPSTREAM_")
