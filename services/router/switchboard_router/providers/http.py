"""The one pooled HTTP client a router process uses for every provider."""

from __future__ import annotations

import aiohttp


def create_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: per-request deadlines bound the work
        limit_per_host=0,
        keepalive_timeout=60,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
        raise_for_status=False,
        auto_decompress=True,
    )
