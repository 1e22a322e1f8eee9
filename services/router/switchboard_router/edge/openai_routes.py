"""PLACEHOLDER: filled by its owner."""

from __future__ import annotations

from aiohttp import web

from switchboard_router.edge.door import Door


def routes(door: Door) -> list[web.RouteDef]:
    return []
