"""Structured (JSON) logs with the request id of the current call.

Log messages name events and ids, never secrets or prompt text: there is no field for
them, and callers pass only counts, ids and codes in ``extra``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ExpectedFailure(logging.Filter):
    """Writes the exception of an expected, retried failure as its type and message instead
    of a traceback: asyncpg's pool logs one each time it cannot restore its connections while
    Postgres is unreachable, which is an outage to report, not a bug to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno < logging.ERROR:
            error = record.exc_info[1]
            cause = error.__cause__ if error is not None else None
            record.__dict__["error"] = " <- ".join(
                f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                for e in (error, cause)
                if e is not None
            )
            record.exc_info = None
            record.exc_text = None
        return True


# Loggers whose warnings carry the exceptions of failures they retry (ExpectedFailure).
RETRYING_LOGGERS = ("asyncpg.pool",)


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel("WARNING")
    for retrying in RETRYING_LOGGERS:
        logger = logging.getLogger(retrying)
        if not any(isinstance(f, ExpectedFailure) for f in logger.filters):
            logger.addFilter(ExpectedFailure())
