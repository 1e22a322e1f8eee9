"""OpenAI chat completions (``POST {base}/chat/completions``), streaming with SSE.

Serves OpenAI and every OpenAI-compatible server (vLLM, Ollama, Together, Groq, ...); how the
hosts differ is data in :mod:`.openai_dialects`, and reading their answers is
:mod:`.openai_stream`. A host that answers ``stream: true`` with one whole
``chat.completion`` JSON body is read as the complete answer.

Reasoning the client returns on an assistant turn (``Message.reasoning``) is never sent: no
OpenAI-compatible host verifies or needs it (DeepSeek refuses ``reasoning_content`` in the
history, Mistral takes the history without its thinking), and blocks of another provider's
format could not be verified anyway. A tool call's ``signature`` is dropped for the same reason.

Prompt-cache marks (``TextPart.cache`` / ``ImagePart.cache``) go only to hosts whose dialect
takes ``cache_control`` (OpenRouter): a marked message's content is sent as parts, each marked
part with ``cache_control``. Other hosts cache on their own and get no marks; that is not an
ignored parameter (the response's ``ignored_parameters`` does not list it), since the prompt
is still cached there and the hits are reported.

Wire format: https://platform.openai.com/docs/api-reference/chat/streaming
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from switchboard_router.canonical import (
    CACHE_1H,
    AdapterEvent,
    CompletionRequest,
    Message,
    Part,
    ReasoningConfig,
    ReasoningEffort,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolChoice,
    ToolChoiceMode,
)
from switchboard_router.providers.base import Target
from switchboard_router.providers.openai_dialects import (
    Dialect,
    dialect_for,
    effort_for,
    nearest_effort,
)
from switchboard_router.providers.openai_stream import StreamParser, error_from_body
from switchboard_router.providers.streaming import UpstreamCall, stream_sse

ROLES = {Role.SYSTEM: "system", Role.USER: "user", Role.ASSISTANT: "assistant", Role.TOOL: "tool"}


def _content(message: Message, marks: bool) -> str | list[dict[str, Any]] | None:
    """A plain string for text-only messages (every host takes that), else content parts;
    parts too when ``marks`` are sent and a part is marked."""
    marked = marks and any(part.cache for part in message.parts)
    if not message.has_image and not marked:
        text = message.text
        return text if text or not message.tool_calls else None
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            item: dict[str, Any] = {"type": "text", "text": part.text}
        else:
            image: dict[str, Any] = {"url": part.as_url()}
            if part.detail:
                image["detail"] = part.detail
            item = {"type": "image_url", "image_url": image}
        parts.append(_marked(item, part) if marks else item)
    return parts


def _marked(item: dict[str, Any], part: Part) -> dict[str, Any]:
    if part.cache:
        item["cache_control"] = {"type": "ephemeral"}
        if part.cache == CACHE_1H:
            item["cache_control"]["ttl"] = "1h"
    return item


def _message(message: Message, dialect: Dialect) -> dict[str, Any]:
    content = _content(message, dialect.cache_control)
    item: dict[str, Any] = {"role": ROLES[message.role], "content": content}
    if message.name:
        item["name"] = message.name
    if message.tool_call_id:
        item["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        item["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return item


def _tool_choice(choice: ToolChoice, dialect: Dialect) -> str | dict[str, Any]:
    if choice.mode == ToolChoiceMode.TOOL:
        return {"type": "function", "function": {"name": choice.name}}
    if choice.mode == ToolChoiceMode.REQUIRED:
        return dialect.required_tool_choice
    return choice.mode.value


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.kind != ResponseFormatKind.JSON_SCHEMA:
        return {"type": fmt.kind.value}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema or {}}
    if fmt.strict:
        schema["strict"] = True
    return {"type": "json_schema", "json_schema": schema}


def build_body(request: CompletionRequest, target: Target) -> dict[str, Any]:
    """The chat-completions body; the relay has already unset what the host cannot take."""
    dialect = dialect_for(target.dialect)
    body: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": [_message(m, dialect) for m in request.messages],
        "stream": True,
    }
    if dialect.ask_stream_usage:
        body["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        body[dialect.max_tokens_field] = request.max_tokens
    if request.seed is not None:
        body[dialect.seed_field] = request.seed
    for name in ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice, dialect)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    if request.logprobs or request.top_logprobs is not None:
        body["logprobs"] = True  # top_logprobs needs it
        if request.top_logprobs is not None:
            body["top_logprobs"] = request.top_logprobs
    if request.n is not None:
        body["n"] = request.n
    if request.reasoning is not None:
        body.update(reasoning_fields(request.reasoning, dialect))
    if request.user:
        body["user"] = request.user
    return body


def reasoning_fields(config: ReasoningConfig, dialect: Dialect) -> dict[str, Any]:
    """The body fields that ask ``dialect``'s host for ``config``'s reasoning."""
    if dialect.reasoning == "object":  # OpenRouter's own object
        wanted: dict[str, Any] = {}
        if config.effort is not None:
            wanted["effort"] = config.effort.value
        elif config.max_tokens is not None:
            wanted["max_tokens"] = config.max_tokens
        if config.exclude:
            wanted["exclude"] = True
        if not config.enabled:
            wanted["enabled"] = False
        return {"reasoning": wanted}
    if dialect.reasoning != "effort" or not dialect.efforts:
        return {}
    efforts = dialect.efforts
    if not config.enabled or config.effort == ReasoningEffort.NONE:
        effort = "none" if "none" in efforts else efforts[0]
    elif config.effort is not None:
        effort = nearest_effort(config.effort.value, efforts)
    elif config.max_tokens is not None:
        effort = effort_for(config.max_tokens, efforts)
    else:
        return {}  # the model's default amount
    return {"reasoning_effort": effort}


class OpenAIChatAdapter:
    """Adapter for OpenAI chat completions and every compatible server."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def parameters(self, dialect: str) -> frozenset[str]:
        return dialect_for(dialect).parameters

    def requires_credential(self, dialect: str) -> bool:
        return dialect_for(dialect).key_required

    def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        return stream_sse(self._session, self, request, target, timeout=timeout)

    # What :func:`.streaming.stream_sse` asks of this provider.
    stray = True  # hosts may end the stream with a bare JSON error line
    error_from_body = staticmethod(error_from_body)

    def call(self, request: CompletionRequest, target: Target) -> UpstreamCall:
        headers = {}
        if target.api_key and dialect_for(target.dialect).auth == "bearer":
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        url = target.base_url.rstrip("/") + "/chat/completions"
        return UpstreamCall(url, headers, build_body(request, target))

    def reader(self, provider: str) -> StreamParser:
        return StreamParser(provider)
