"""Prometheus metrics shared by every service.

Names follow Prometheus conventions (``switchboard_`` prefix, base units, ``_total``
counters, ``_seconds`` histograms). Labels are bounded: never a key, user or request id.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

GRPC_HANDLED = Counter(
    "switchboard_grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "switchboard_grpc_server_handling_seconds",
    "Time to handle an RPC, streams included.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def serve_metrics(host: str, port: int) -> int:
    """Start the ``/metrics`` HTTP endpoint; returns the bound port (port 0 picks one)."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_address[1])
