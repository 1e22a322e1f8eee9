"""The standard health service (``grpc.health.v1.Health``), with all three of its RPCs.

grpcio-health-checking's asyncio servicer implements ``Check`` and ``Watch`` but not ``List``,
which the service descriptor has had since 2024: its generated base raises
``NotImplementedError``, so every ``List`` call became ``INTERNAL`` and a logged traceback.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Every registered service's status (``""``: the server's), as last set."""
        reply = health_pb2.HealthListResponse()
        for service, status in self._server_status.items():
            reply.statuses[service].status = status
        return reply
