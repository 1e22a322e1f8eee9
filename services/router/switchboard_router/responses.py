"""The relay's events as the public API's messages: one stream message per event, or one
whole :class:`CreateCompletionResponse` folded from them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.money import format_usd
from switchboard_router.canonical import (
    FinishEvent,
    LogprobsDelta,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)
from switchboard_router.provider_metadata import metadata_struct
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.usage_sink import finish_reason, timestamp, usage_message

Response = router_pb2.StreamCompletionResponse
Delta = router_pb2.CompletionDelta


def _token_bytes(value: tuple[int, ...] | None) -> bytes:
    if not value:
        return b""
    try:
        return bytes(value)
    except ValueError:  # not bytes (a provider's mistake): left out
        return b""


def _top(top: TopLogprob) -> router_pb2.TopLogprob:
    return router_pb2.TopLogprob(
        token=top.token, logprob=top.logprob, token_bytes=_token_bytes(top.bytes)
    )


def logprob_messages(tokens: Iterable[TokenLogprob]) -> list[router_pb2.TokenLogprob]:
    return [
        router_pb2.TokenLogprob(
            token=t.token,
            logprob=t.logprob,
            token_bytes=_token_bytes(t.bytes),
            top_logprobs=[_top(top) for top in t.top],
        )
        for t in tokens
    ]


def detail_messages(blocks: Iterable[ReasoningBlock]) -> list[common_pb2.ReasoningDetail]:
    return [
        common_pb2.ReasoningDetail(
            format=b.format, text=b.text, signature=b.signature, redacted_data=b.redacted
        )
        for b in blocks
    ]


def _start(event: Started) -> router_pb2.CompletionStart:
    return router_pb2.CompletionStart(
        generation_id=event.generation_id,
        model=event.route.model_id,
        provider=event.route.provider_id,
        endpoint_id=event.route.endpoint_id,
        create_time=timestamp(event.create_time),
        ignored_parameters=event.ignored_parameters,
    )


def _end(event: Completed) -> router_pb2.CompletionEnd:
    end = router_pb2.CompletionEnd(
        finish_reason=finish_reason(event.finish.reason),
        usage=usage_message(event.usage),
        cost_usd=format_usd(event.cost),
        native_finish_reason=event.finish.native_reason,
        reasoning_details=detail_messages(event.reasoning.get(0, ())),
        choices=[
            router_pb2.ChoiceEnd(
                index=index,
                finish_reason=finish_reason(finish.reason),
                native_finish_reason=finish.native_reason,
                reasoning_details=detail_messages(event.reasoning.get(index, ())),
            )
            for index, finish in sorted(event.choices.items())
        ],
    )
    if event.metadata:
        end.provider_metadata.CopyFrom(metadata_struct(event.metadata))
    return end


def _text_delta(field: str, text: str, choice: int) -> Response:
    """A delta message carrying ``text`` in ``field`` (``text``, ``reasoning``, ``refusal``).

    Filled in field by field on a fresh message: with protobuf's upb backend that is half the
    CPU of building the same message from keyword arguments (1.17 -> 0.54 µs measured in
    process), and the bytes are the same."""
    message = Response()
    delta = message.delta  # marks the delta present, even for an empty text
    setattr(delta, field, text)
    delta.choice_index = choice
    return message


def stream_message(event: RelayEvent) -> Response:
    """The stream message for one relay event (the deltas of every token: :func:`_text_delta`)."""
    if type(event) is TextDelta:
        return _text_delta("text", event.text, event.choice)
    if type(event) is ReasoningDelta:
        return _text_delta("reasoning", event.text, event.choice)
    if type(event) is ToolCallDelta:
        call = router_pb2.ToolCallDelta(
            index=event.index,
            id=event.id,
            name=event.name,
            arguments_json=event.arguments,
            signature=event.signature,
        )
        return Response(delta=Delta(tool_call=call, choice_index=event.choice))
    if type(event) is RefusalDelta:
        return _text_delta("refusal", event.text, event.choice)
    if type(event) is LogprobsDelta:
        tokens = logprob_messages(event.tokens)
        if event.refusal:
            return Response(delta=Delta(refusal_logprobs=tokens, choice_index=event.choice))
        return Response(delta=Delta(logprobs=tokens, choice_index=event.choice))
    if type(event) is Started:
        return Response(start=_start(event))
    assert type(event) is Completed
    return Response(end=_end(event))


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, common_pb2.ToolCall] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    refusal_logprobs: list[TokenLogprob] = field(default_factory=list)


class WholeCompletion:
    """Folds a generation's events into one :class:`CreateCompletionResponse`."""

    def __init__(self) -> None:
        self.reply = router_pb2.CreateCompletionResponse()
        self._choices: dict[int, _Choice] = {}
        self._end: Completed | None = None

    def add(self, event: RelayEvent) -> None:
        if type(event) is Started:
            self._started(event)
            return
        if type(event) is Completed:
            self._end = event
            return
        choice = self._choices.setdefault(event.choice, _Choice())  # type: ignore[union-attr]
        if type(event) is TextDelta:
            choice.text.append(event.text)
        elif type(event) is ReasoningDelta:
            choice.reasoning.append(event.text)
        elif type(event) is RefusalDelta:
            choice.refusal.append(event.text)
        elif type(event) is ToolCallDelta:
            call = choice.calls.setdefault(event.index, common_pb2.ToolCall())
            call.id = call.id or event.id
            call.name = call.name or event.name
            call.signature = call.signature or event.signature
            call.arguments_json += event.arguments
        elif type(event) is LogprobsDelta:
            (choice.refusal_logprobs if event.refusal else choice.logprobs).extend(event.tokens)

    def _started(self, event: Started) -> None:
        reply = self.reply
        reply.generation_id = event.generation_id
        reply.model = event.route.model_id
        reply.provider = event.route.provider_id
        reply.endpoint_id = event.route.endpoint_id
        reply.create_time.CopyFrom(timestamp(event.create_time))
        reply.ignored_parameters.extend(event.ignored_parameters)

    def result(self) -> router_pb2.CreateCompletionResponse:
        reply, end = self.reply, self._end
        first = self._choices.get(0, _Choice())
        reply.text = "".join(first.text)
        reply.reasoning = "".join(first.reasoning)
        reply.refusal = "".join(first.refusal)
        reply.tool_calls.extend(first.calls[i] for i in sorted(first.calls))
        reply.logprobs.extend(logprob_messages(first.logprobs))
        reply.refusal_logprobs.extend(logprob_messages(first.refusal_logprobs))
        if end is None:
            return reply
        reply.finish_reason = finish_reason(end.finish.reason)
        reply.native_finish_reason = end.finish.native_reason
        reply.usage.CopyFrom(usage_message(end.usage))
        reply.cost_usd = format_usd(end.cost)
        reply.reasoning_details.extend(detail_messages(end.reasoning.get(0, ())))
        if end.metadata:
            reply.provider_metadata.CopyFrom(metadata_struct(end.metadata))
        reply.choices.extend(
            self._choice(i, f, end.reasoning) for i, f in sorted(end.choices.items())
        )
        return reply

    def _choice(
        self,
        index: int,
        finish: FinishEvent,
        reasoning: Mapping[int, tuple[ReasoningBlock, ...]],
    ) -> router_pb2.Choice:
        got = self._choices.get(index, _Choice())
        return router_pb2.Choice(
            index=index,
            text="".join(got.text),
            reasoning="".join(got.reasoning),
            refusal="".join(got.refusal),
            tool_calls=[got.calls[i] for i in sorted(got.calls)],
            finish_reason=finish_reason(finish.reason),
            native_finish_reason=finish.native_reason,
            reasoning_details=detail_messages(reasoning.get(index, ())),
            logprobs=logprob_messages(got.logprobs),
            refusal_logprobs=logprob_messages(got.refusal_logprobs),
        )
