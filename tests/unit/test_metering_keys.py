"""API key secrets: format, hash and the prefix shown to users."""

from __future__ import annotations

import hashlib
import re

import pytest

from switchboard_core.errors import InvalidArgument
from switchboard_core.key_format import hash_secret, shown_prefix
from switchboard_metering.keys import (
    is_well_formed,
    new_key_id,
    new_secret,
    validate_account_id,
    validate_name,
)


def test_secret_format() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert re.fullmatch(r"sk-sb-v1-[A-Za-z0-9_-]{43}", secret)
        assert is_well_formed(secret)


def test_hash_is_sha256_hex() -> None:
    secret = new_secret()
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_secret(secret))
    assert secret not in hash_secret(secret)


def test_prefix_and_key_id() -> None:
    secret = new_secret()
    assert shown_prefix(secret) == secret[:14] and shown_prefix(secret).startswith("sk-sb-v1-")
    assert re.fullmatch(r"key_[0-9a-f]{16}", new_key_id())


@pytest.mark.parametrize(
    "secret",
    ["", "sk-sb-v1-", "sk-sb-v1-" + "a" * 42, "sk-sb-v1-" + "a" * 44, "sk-sb-v1-" + "+" * 43],
)
def test_malformed_secrets(secret: str) -> None:
    assert not is_well_formed(secret)


@pytest.mark.parametrize("account_id", ["a", "acct_1.prod-eu", "A" * 64])
def test_good_account_ids(account_id: str) -> None:
    validate_account_id(account_id)


@pytest.mark.parametrize("account_id", ["", "a" * 65, "with space", "ümlaut", "a/b", "a\n"])
def test_bad_account_ids_name_the_field(account_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_account_id(account_id)
    assert [field for field, _ in caught.value.violations] == ["account_id"]


def test_name_length() -> None:
    validate_name("n" * 128)
    with pytest.raises(InvalidArgument) as caught:
        validate_name("n" * 129)
    assert [field for field, _ in caught.value.violations] == ["name"]


@pytest.mark.parametrize(
    "cursor",
    [
        "9999-12-31T23:59:59-05:00|key_x",  # past year 9999 once in UTC
        "0001-01-01T00:00:00+05:00|key_x",  # before year 1 once in UTC
        "2026-01-01T00:00:00|key_x",  # no offset
        "2026-01-01T00:00:00+01:00|key_x",  # not how a token is written
        "2026-01-01T00:00:00+00:00|",
    ],
)
def test_a_page_token_that_no_response_gave_is_invalid(cursor: str) -> None:
    from switchboard_core.paging import encode_token
    from switchboard_metering.keys import decode_cursor

    with pytest.raises(InvalidArgument) as refused:
        decode_cursor(encode_token(cursor))
    assert refused.value.violations[0][0] == "page_token"


def test_a_usage_range_ending_in_year_one_needs_a_start() -> None:
    from datetime import UTC, datetime

    from switchboard.metering.v1 import metering_pb2
    from switchboard_metering.service import usage_range

    request = metering_pb2.QueryUsageRequest(key_id="key_x")
    request.end_time.FromDatetime(datetime(1, 1, 2, tzinfo=UTC))
    with pytest.raises(InvalidArgument) as refused:
        usage_range(request, datetime.now(UTC))
    assert refused.value.violations[0][0] == "end_time"
