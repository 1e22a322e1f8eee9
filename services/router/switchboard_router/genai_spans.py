"""The completion's span, in the OpenTelemetry GenAI semantic conventions' terms.

One INTERNAL span per completion, ``chat <model>``, around the relay (its children: each
upstream HTTP request, :mod:`.providers.http`, and the usage event's publication,
:mod:`.usage_sink`). Attributes, as the conventions name them (semconv ``gen_ai.*``):

- at the start: ``gen_ai.operation.name`` (``chat``), ``gen_ai.request.model`` (the model
  asked for), ``gen_ai.request.max_tokens`` when set, ``switchboard.streamed``;
- at the first event: ``gen_ai.provider.name`` (the provider id of the endpoint that
  answered), ``gen_ai.response.model`` (its upstream model), ``gen_ai.response.id`` (the
  generation id, as the response's ``id`` says it);
- at the end: ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
  ``gen_ai.response.finish_reasons``; or ``error.type`` (the error's reason) and an ERROR
  status when it failed.

Never the messages, the completion's text, tool arguments or keys: the span reads the
request's model and limits and the relay's bookkeeping events only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Final

from opentelemetry.trace import Span

from switchboard_core import tracing
from switchboard_router.canonical import CompletionRequest, Finish
from switchboard_router.relay import Completed, RelayEvent, Started

_OFF: Final = contextlib.nullcontext(None)
_FINISH_NAMES: Final = {finish: finish.name.lower() for finish in Finish}


@contextlib.contextmanager
def _completion(request: CompletionRequest, streamed: bool) -> Iterator[Span | None]:
    attributes: dict[str, str | int | bool] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": tracing.bounded(request.model),
        "switchboard.streamed": streamed,
    }
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    span = tracing.start_span(f"chat {tracing.bounded(request.model)}", attributes=attributes)
    assert span is not None  # tracing is on: completion() checked
    token = tracing.attach(span)
    try:
        yield span
    except (GeneratorExit, asyncio.CancelledError):  # the caller went away: not a failure
        span.set_attribute("switchboard.cancelled", True)
        raise
    except BaseException as error:
        tracing.fail(span, error)
        raise
    finally:
        span.end()
        tracing.detach(token)


def completion(
    request: CompletionRequest, streamed: bool
) -> contextlib.AbstractContextManager[Span | None]:
    """The completion's span, current while the relay runs; ``None`` (and no cost) when
    tracing is off."""
    if not tracing.active():
        return _OFF
    return _completion(request, streamed)


def note(span: Span, event: RelayEvent) -> None:
    """Add what ``event`` says to the completion's span (Started and Completed only)."""
    if type(event) is Started:
        route = event.route
        span.set_attribute("gen_ai.provider.name", tracing.bounded(route.provider_id))
        span.set_attribute("gen_ai.response.model", tracing.bounded(route.upstream_model))
        span.set_attribute("gen_ai.response.id", event.generation_id)
    elif type(event) is Completed:
        span.set_attribute("gen_ai.usage.input_tokens", event.usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", event.usage.completion_tokens)
        finishes = [f for _, f in sorted(event.choices.items())] or [event.finish]
        reasons = [_FINISH_NAMES.get(f.reason, "unspecified") for f in finishes[:16]]
        span.set_attribute("gen_ai.response.finish_reasons", reasons)
        if event.usage.estimated:
            span.set_attribute("switchboard.usage.estimated", True)
