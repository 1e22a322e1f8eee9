"""An API key's expiry and allow-lists, checked when the key is created: every bad field is
named, with its index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from switchboard_core.errors import InvalidArgument
from switchboard_metering.keys import MAX_ALLOWED, check_key_rules

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def problems(error: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return dict(error.value.violations)


def test_no_rules_store_nothing() -> None:
    assert check_key_rules(None, [], [], NOW) == (None, None)


def test_good_rules_are_kept_as_given() -> None:
    models = ["openai/gpt-4o-mini", "deepseek/deepseek-r1:free"]
    kept = check_key_rules(NOW + timedelta(seconds=1), models, ["openai", "deep-infra"], NOW)
    assert kept == (models, ["openai", "deep-infra"])


def test_every_bad_field_is_named() -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_key_rules(
            NOW,
            ["openai/gpt-4o-mini", "gpt-4o", "openai/gpt-4o-mini", "openai/gpt-4o:floor", ""],
            ["openai", "Open AI", "a" * 65],
            NOW,
        )
    found = problems(refused)
    assert found["expire_time"] == "must be in the future"
    assert set(found) == {
        "expire_time",
        "allowed_models[1]",
        "allowed_models[2]",
        "allowed_models[3]",
        "allowed_models[4]",
        "allowed_providers[1]",
        "allowed_providers[2]",
    }
    assert found["allowed_models[2]"] == "listed twice"
    assert "variant" in found["allowed_models[3]"]
    assert found["allowed_models[4]"] == "required"


def test_allow_lists_are_bounded() -> None:
    many = [f"author/model-{i}" for i in range(MAX_ALLOWED + 1)]
    with pytest.raises(InvalidArgument) as refused:
        check_key_rules(None, many, [f"p{i}" for i in range(MAX_ALLOWED + 1)], NOW)
    assert problems(refused) == {
        "allowed_models": f"at most {MAX_ALLOWED} entries",
        "allowed_providers": f"at most {MAX_ALLOWED} entries",
    }
    assert check_key_rules(None, many[:MAX_ALLOWED], [], NOW)[0] == many[:MAX_ALLOWED]
