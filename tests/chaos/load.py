"""The chaos table's load: concurrent streams through the router, each one timed.

Every worker streams one completion after another until told to stop and records a
:class:`Call` per stream: when it started, when its first message and first and last tokens
came, when it ended (final message or error), what the client was told (usage and cost) and,
for an error, its gRPC code and ``ErrorInfo`` reason. A worker waits a moment after an error,
so a fast refusal does not spin (error counts are per worker per ``pause``).

Every call has a deadline (``deadline``): a client gives up at some point, and the table's
longest wait is capped there (a call that hit it is marked ``capped``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from tests.e2e.support import auth

MODEL = "switchboard/demo"


@dataclass
class Call:
    limited: bool  # the call's key has a spend limit (reserves in Redis)
    start: float
    first: float | None = None  # first message of any kind
    first_token: float | None = None
    last_token: float | None = None
    end: float | None = None  # final message or error
    words: int = 0  # words delivered (the demo upstream's tokens are words)
    generation_id: str = ""
    told: tuple[int, int, Decimal] | None = None  # prompt, completion, cost of the final message
    code: str = ""  # gRPC code name of an error; "" when it ended well
    reason: str = ""  # the error's ErrorInfo reason
    capped: bool = False  # the client's deadline ended it

    @property
    def ok(self) -> bool:
        return self.end is not None and not self.code

    @property
    def failed(self) -> bool:
        return bool(self.code)


def ask(i: int, model: str = MODEL) -> router_pb2.StreamCompletionRequest:
    text = f"chaos request {i}" + " more" * (i % 5)
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)
    return router_pb2.StreamCompletionRequest(model=model, messages=[message], max_tokens=20)


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ``ErrorInfo`` reason of an error, or "" when it carries none."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return ""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


async def stream_once(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    request: router_pb2.StreamCompletionRequest,
    call: Call,
    clock: Callable[[], float],
    deadline: float,
) -> Call:
    """Stream ``request`` once and fill ``call`` in."""
    try:
        stream = router.StreamCompletion(request, metadata=auth(key), timeout=deadline)
        async for message in stream:
            now = clock()
            if call.first is None:
                call.first = now
            if message.HasField("start"):
                call.generation_id = message.start.generation_id
            elif message.HasField("delta"):
                words = len(message.delta.text.split())
                if words:
                    call.words += words
                    call.first_token = call.first_token or now
                    call.last_token = now
            elif message.HasField("end"):
                usage = message.end.usage
                call.told = (
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    Decimal(message.end.cost_usd),
                )
        call.end = clock()
        if call.told is None:  # a stream may not end without its final message
            call.code, call.reason = "NO_FINAL_MESSAGE", ""
    except grpc.aio.AioRpcError as error:
        call.end = clock()
        call.code, call.reason = error.code().name, error_reason(error)
        call.capped = (
            error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            and call.end - call.start >= deadline - 0.5
        )
    return call


@dataclass
class Load:
    """``workers`` streams at a time: the first ``limited_workers`` with ``limited``, the rest
    with ``unlimited``; :meth:`start`, then :meth:`stop` and ``await`` :meth:`drain`."""

    router: router_pb2_grpc.RouterServiceAsyncStub
    limited: metering_pb2.CreateApiKeyResponse
    unlimited: metering_pb2.CreateApiKeyResponse
    workers: int = 16
    limited_workers: int = 8
    deadline: float = 60.0
    pause: float = 0.1
    calls: list[Call] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _next: int = 0

    def clock(self) -> float:
        return asyncio.get_running_loop().time()

    def start(self) -> None:
        for n in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(n < self.limited_workers)))

    def stop(self) -> None:
        self._stopping.set()

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks)

    def pending(self) -> list[Call]:
        return [c for c in self.calls if c.end is None]

    async def _worker(self, limited: bool) -> None:
        key = self.limited if limited else self.unlimited
        while not self._stopping.is_set():
            self._next += 1
            call = Call(limited=limited, start=self.clock())
            self.calls.append(call)
            await stream_once(self.router, key, ask(self._next), call, self.clock, self.deadline)
            if call.failed:
                await asyncio.sleep(self.pause)
