"""The error-body reader every adapter shares (providers/error_body.py): the shapes providers
send, its bounds, and that the three adapters read one shape alike."""

from __future__ import annotations

import orjson
import pytest

from switchboard_router.providers import anthropic_stream, gemini_errors, openai_stream
from switchboard_router.providers.base import (
    UpstreamBadRequest,
    UpstreamContextLengthExceeded,
    UpstreamRateLimited,
)
from switchboard_router.providers.error_body import (
    MAX_ERROR_BODY_BYTES,
    MAX_MESSAGE_CHARS,
    NO_MESSAGE,
    ErrorBody,
    read_error_body,
)


def test_the_error_objects_fields_are_picked_out() -> None:
    body = {"error": {"message": "slow down", "type": "rate_limit_error", "code": 429}}
    read = read_error_body(orjson.dumps(body))
    assert (read.message, read.type, read.code) == ("slow down", "rate_limit_error", "429")
    assert read.error == body["error"]


def test_a_bare_string_error_is_the_message() -> None:
    assert read_error_body(b'{"error": "no such model"}') == ErrorBody(message="no such model")


def test_googles_array_of_one_error_body_is_read_like_one_body() -> None:
    body = [{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}]
    read = read_error_body(orjson.dumps(body))
    assert (read.message, read.code, read.error["status"]) == ("bad", "400", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "payload",
    [b"", b"<html>502 Bad Gateway</html>", b"[]", b'"text"', b'{"error": null}', b'{"x": 1}'],
)
def test_a_body_without_an_error_object_says_nothing(payload: bytes) -> None:
    assert read_error_body(payload) == ErrorBody()
    assert read_error_body(payload).message == NO_MESSAGE


def test_a_body_over_the_bound_is_not_parsed_and_a_long_message_is_cut() -> None:
    padded = orjson.dumps({"error": {"message": "m", "pad": "x" * MAX_ERROR_BODY_BYTES}})
    assert len(padded) > MAX_ERROR_BODY_BYTES
    assert read_error_body(padded) == ErrorBody()
    long = read_error_body(orjson.dumps({"error": {"message": "y" * 10_000}}))
    assert long.message == "y" * MAX_MESSAGE_CHARS


def test_the_three_adapters_keep_the_providers_message_and_class_alike() -> None:
    body = orjson.dumps({"error": {"message": "too many requests", "type": "x"}})
    for error_from_body in (
        openai_stream.error_from_body,
        anthropic_stream.error_from_body,
        gemini_errors.error_from_body,
    ):
        error = error_from_body(429, body, "p", 3.0)
        assert isinstance(error, UpstreamRateLimited), error_from_body.__module__
        assert str(error).endswith("HTTP 429: too many requests")
        assert error.retry_after_seconds == 3.0


def test_each_adapter_still_reads_its_own_context_length_signal() -> None:
    openai = orjson.dumps({"error": {"message": "x", "code": "context_length_exceeded"}})
    anthropic = orjson.dumps({"error": {"message": "prompt is too long: 9 tokens > 8 maximum"}})
    gemini = orjson.dumps(
        {"error": {"code": 400, "message": "The input token count (9) exceeds the maximum"}}
    )
    assert isinstance(
        openai_stream.error_from_body(400, openai, "p", None), UpstreamContextLengthExceeded
    )
    assert isinstance(
        anthropic_stream.error_from_body(400, anthropic, "p", None), UpstreamContextLengthExceeded
    )
    assert isinstance(
        gemini_errors.error_from_body(400, gemini, "p", None), UpstreamContextLengthExceeded
    )
    # The same words in another provider's body are only a bad request there.
    assert type(openai_stream.error_from_body(400, anthropic, "p", None)) is UpstreamBadRequest
