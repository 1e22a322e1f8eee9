"""The live endpoint figures as Prometheus gauges (metrics.py's ``ENDPOINT_*``), one series
per endpoint with figures or a breaker not closed; series of endpoints that have neither any
more are removed, so the label set stays bounded by what is recent."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from switchboard_router import metrics
from switchboard_router.breaker import CLOSED, STATE_VALUES

if TYPE_CHECKING:
    from switchboard_router.endpoint_stats import Figures


def export(
    figures: Mapping[str, Figures], breakers: Mapping[str, str], exported: set[str]
) -> set[str]:
    """Set the gauges of every endpoint in ``figures`` and ``breakers`` (endpoint -> state of
    breakers not closed), remove those of the ``exported`` ones left out; returns the set
    now exported."""
    endpoints = set(figures) | set(breakers)
    for endpoint in exported - endpoints:
        _forget(endpoint)
    for endpoint in endpoints:
        found = figures.get(endpoint)
        if found is not None:
            _set(endpoint, found)
        state = breakers.get(endpoint, CLOSED)
        metrics.ENDPOINT_BREAKER_STATE.labels(endpoint).set(STATE_VALUES[state])
    return endpoints


def _set(endpoint: str, figures: Figures) -> None:
    metrics.ENDPOINT_UPTIME.labels(endpoint).set(figures.uptime)
    ttft = figures.ttft
    for quantile, value in (
        ("0.5", None if ttft is None else ttft.p50),
        ("0.9", None if ttft is None else ttft.p90),
    ):
        if value is None:
            with contextlib.suppress(KeyError):
                metrics.ENDPOINT_TTFT.remove(endpoint, quantile)
        else:
            metrics.ENDPOINT_TTFT.labels(endpoint, quantile).set(value)
    if figures.throughput is None:
        with contextlib.suppress(KeyError):
            metrics.ENDPOINT_THROUGHPUT.remove(endpoint, "0.5")
    else:
        metrics.ENDPOINT_THROUGHPUT.labels(endpoint, "0.5").set(figures.throughput.p50)


def _forget(endpoint: str) -> None:
    for gauge, labels in (
        (metrics.ENDPOINT_UPTIME, [(endpoint,)]),
        (metrics.ENDPOINT_BREAKER_STATE, [(endpoint,)]),
        (metrics.ENDPOINT_TTFT, [(endpoint, "0.5"), (endpoint, "0.9")]),
        (metrics.ENDPOINT_THROUGHPUT, [(endpoint, "0.5")]),
    ):
        for values in labels:
            with contextlib.suppress(KeyError):
                gauge.remove(*values)
