"""Logs: a retried failure's warning names its exception without a traceback; errors keep it."""

from __future__ import annotations

import json
import logging
import sys

from switchboard_core.logs import ExpectedFailure, JsonFormatter


def _record(level: int) -> logging.LogRecord:
    try:
        try:
            raise TimeoutError
        except TimeoutError as cause:
            raise OSError("connection lost") from cause
    except OSError:
        return logging.LogRecord(
            "asyncpg.pool", level, __file__, 1, "Failed to restore the pool", (), sys.exc_info()
        )


def test_a_retried_failure_is_named_without_a_traceback() -> None:
    record = _record(logging.WARNING)
    assert ExpectedFailure().filter(record)
    line = json.loads(JsonFormatter("metering").format(record))
    assert "exc" not in line
    assert line["error"] == "OSError: connection lost <- TimeoutError"


def test_an_error_keeps_its_traceback() -> None:
    record = _record(logging.ERROR)
    assert ExpectedFailure().filter(record)
    line = json.loads(JsonFormatter("metering").format(record))
    assert "Traceback" in line["exc"]
