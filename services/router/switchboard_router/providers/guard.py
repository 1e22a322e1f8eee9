"""What every adapter's stream passes through before the relay uses it.

The relay applies :class:`EventGuard` inline, as it reads each event (no extra generator hop on
the hot path); :func:`guarded` wraps a stream with the same guard for other readers (the
recorded-stream conformance harness).

Two promises hold for every adapter, so they are kept here once rather than in each:

- **An adapter's bug is the provider's fault, said clearly.** Any exception an adapter raises
  that is not an :class:`UpstreamError` (a ``TypeError`` on a field of an unexpected shape, say)
  becomes an :class:`UpstreamProtocolError`: before the first token the relay falls back to the
  next endpoint, after it the client's stream ends ``UNAVAILABLE`` naming the provider. The
  traceback is logged (no prompt or key is in it: adapters hold neither in locals they raise).
- **Finish reasons mean the same whatever the provider.** A choice that emitted a tool call and
  finished ``STOP`` finishes ``TOOL_CALLS`` (OpenAI sends ``stop`` after a call forced with a
  named ``tool_choice``; Gemini has no tool-call reason at all); the provider's own reason stays
  in ``native_reason``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from switchboard_router.canonical import AdapterEvent, Finish, FinishEvent, ToolCallDelta
from switchboard_router.providers.base import UpstreamError, UpstreamProtocolError

log = logging.getLogger(__name__)


class EventGuard:
    """Normalises one stream's events; :meth:`failure` turns an adapter's crash into an error."""

    __slots__ = ("_called", "provider")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._called: set[int] = set()  # choices that emitted a tool call

    def see(self, event: AdapterEvent) -> AdapterEvent:
        if type(event) is ToolCallDelta:
            self.called(event)
        elif type(event) is FinishEvent:
            return self.finish(event)
        return event

    def called(self, event: ToolCallDelta) -> None:
        self._called.add(event.choice)

    def finish(self, event: FinishEvent) -> FinishEvent:
        if event.reason == Finish.STOP and event.choice in self._called:
            return FinishEvent(Finish.TOOL_CALLS, event.native_reason, event.choice)
        return event

    def failure(self, error: Exception) -> UpstreamProtocolError:
        log.error(
            "adapter failed on the provider's stream",
            exc_info=error,
            extra={"provider": self.provider},
        )
        return UpstreamProtocolError(
            f"{self.provider} sent a stream the router could not read"
            f" ({type(error).__name__}); nothing after this point was relayed",
            provider_id=self.provider,
        )


async def guarded(
    events: AsyncIterator[AdapterEvent], provider: str
) -> AsyncIterator[AdapterEvent]:
    """``events`` normalised, with any adapter crash raised as an :class:`UpstreamError`."""
    guard = EventGuard(provider)
    try:
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            except UpstreamError:
                raise
            except Exception as error:  # the point: nothing else escapes
                raise guard.failure(error) from error
            yield guard.see(event)
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
