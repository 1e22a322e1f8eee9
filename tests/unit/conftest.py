"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from switchboard_core import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process traced into memory for the test (switchboard_core.tracing), then off."""
    exporter = InMemorySpanExporter()
    tracing.configure_for_test(exporter)
    try:
        yield exporter
    finally:
        tracing.reset()
