"""The authorization interceptor's own cost per call, in process: what every RPC pays before
its handler runs (request id, the owner table, the principal from a warm key cache, the NUL
walk of the request), timed over many calls of the bench's completion request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.auth import Authenticator, OperatorPrincipal, TenantPrincipal
from switchboard_core.interceptors import ServerInterceptor, _Call
from switchboard_core.tls import TlsConfig

METHOD = "/switchboard.router.v1.RouterService/StreamCompletion"
KEY = "sk-sb-v1-" + "A" * 43


class _WarmCache:
    """A verifier answering at once, as the router's key cache does on a hit."""

    async def operator(self, secret: str) -> OperatorPrincipal:
        raise AssertionError("not used")

    async def tenant(self, secret: str) -> TenantPrincipal:
        return TenantPrincipal("key_bench", "bench")


class _Context:
    def invocation_metadata(self) -> Iterable[tuple[str, str]]:
        return (("authorization", f"Bearer {KEY}"), ("user-agent", "bench"))

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"ssl"]}


def interceptor_microseconds(calls: int = 20_000, prompt: str = "Write twenty words.") -> float:
    authenticator = Authenticator(TlsConfig(), _WarmCache(), direct_tenants=True)
    call = _Call(ServerInterceptor(authenticator), METHOD)
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)],
    )
    context: Any = _Context()

    async def loop() -> float:
        for _ in range(100):
            await call.admit(request, context)
        start = time.perf_counter()
        for _ in range(calls):
            await call.admit(request, context)
        return (time.perf_counter() - start) / calls * 1e6

    return asyncio.run(loop()) if not _running() else _in_thread(loop)


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_thread(loop: Any) -> float:
    """Run the timing on a fresh event loop in a thread (the caller's loop is busy)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return float(pool.submit(lambda: asyncio.run(loop())).result())
