"""An OpenAI chat completions body (with OpenRouter's extensions) as a router request.

The JSON is read into a :class:`router_pb2.StreamCompletionRequest` (or its unary twin), so
:func:`switchboard_router.requests.parse_request` checks everything exactly as on the gRPC
port; here only the JSON's own shape is checked (types, integer ranges, enum strings), and
the gRPC port's field paths are named back in JSON terms (:func:`json_field`).

Unknown top-level members are ignored, as OpenRouter and most OpenAI-compatible hosts do
(SDKs and frameworks send extras such as ``metadata``, ``store`` or ``transforms``); a known
member of the wrong type is a 400 naming it. Where the body says one thing two ways, the
newer wins: ``max_completion_tokens`` over ``max_tokens``, ``reasoning.effort`` over
``reasoning_effort``; ``model`` comes first and ``models`` follow it as fallbacks (without
``model``, the first of ``models`` is the model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.edge.openai_json import INT64, Reader
from switchboard_router.edge.openai_messages import messages
from switchboard_router.edge.openai_provider import provider

AnyRequest = router_pb2.StreamCompletionRequest | router_pb2.CreateCompletionRequest

EFFORTS = {
    "none": router_pb2.Reasoning.EFFORT_NONE,
    "minimal": router_pb2.Reasoning.EFFORT_MINIMAL,
    "low": router_pb2.Reasoning.EFFORT_LOW,
    "medium": router_pb2.Reasoning.EFFORT_MEDIUM,
    "high": router_pb2.Reasoning.EFFORT_HIGH,
}
TOOL_CHOICES = {
    "auto": router_pb2.ToolChoice.MODE_AUTO,
    "none": router_pb2.ToolChoice.MODE_NONE,
    "required": router_pb2.ToolChoice.MODE_REQUIRED,
}
FORMATS = {
    "text": router_pb2.ResponseFormat.TYPE_TEXT,
    "json_object": router_pb2.ResponseFormat.TYPE_JSON_OBJECT,
    "json_schema": router_pb2.ResponseFormat.TYPE_JSON_SCHEMA,
}
# The gRPC port's field paths that read differently in the JSON body, in order.
_PATHS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^(messages\[\d+\])\.parts\[(\d+)\]\.image\b", r"\1.content[\2].image_url"),
        (r"^(messages\[\d+\])\.parts\b", r"\1.content"),
        (r"^(messages\[\d+\]\.tool_calls\[\d+\])\.arguments_json$", r"\1.function.arguments"),
        (r"^(messages\[\d+\]\.tool_calls\[\d+\])\.name$", r"\1.function.name"),
        (r"^(messages\[\d+\]\.reasoning_details\[\d+\])\.redacted_data$", r"\1.data"),
        (r"^(tools\[\d+\])\.parameters_json$", r"\1.function.parameters"),
        (r"^(tools\[\d+\])\.name$", r"\1.function.name"),
        (r"^tool_choice\.mode$", "tool_choice"),
        (r"^tool_choice\.name$", "tool_choice.function.name"),
        (r"^response_format\.schema_json$", "response_format.json_schema.schema"),
        (r"^response_format\.name$", "response_format.json_schema.name"),
        (r"^provider\.max_price\.(prompt|completion)_usd_per_mtok$", r"provider.max_price.\1"),
    )
)


@dataclass
class ChatRequest:
    """The router request, and how the body asked for it to be answered."""

    request: AnyRequest
    stream: bool = False
    include_usage: bool = False
    # Proto paths whose JSON name depends on what the body used (max_tokens, models).
    renames: dict[str, str] = field(default_factory=dict)

    def json_field(self, path: str) -> str:
        """The JSON path of a gRPC field path (``messages[0].parts[1].image.url`` ->
        ``messages[0].content[1].image_url.url``)."""
        if path in self.renames:
            return self.renames[path]
        for pattern, replacement in _PATHS:
            path = pattern.sub(replacement, path)
        return path

    def in_json_terms(self, error: InvalidArgument) -> InvalidArgument:
        """The same problems, each named by its JSON path."""
        return InvalidArgument([(self.json_field(f), why) for f, why in error.violations])


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """The body as a router request; InvalidArgument naming each JSON field whose type or
    value cannot be a request (the router's own checks come after, in ``prepare``)."""
    read = Reader()
    stream = bool(read.boolean(body, "stream", "stream"))
    message: AnyRequest = (
        router_pb2.StreamCompletionRequest() if stream else router_pb2.CreateCompletionRequest()
    )
    chat = ChatRequest(message, stream=stream)
    _model(body, message, chat, read)
    message.messages.extend(messages(body, read))
    _sampling(body, message, chat, read)
    _tools(body, message, read)
    _response_format(body, message, read)
    _reasoning(body, message, chat, read)
    prefs = provider(body, read)
    if prefs is not None:
        message.provider.CopyFrom(prefs)
    options = read.obj(body, "stream_options", "stream_options") or {}
    usage = read.obj(body, "usage", "usage") or {}  # OpenRouter's {"include": true}
    chat.include_usage = bool(
        read.boolean(options, "include_usage", "stream_options.include_usage")
        or read.boolean(usage, "include", "usage.include")
    )
    if read.problems:
        raise InvalidArgument(read.problems)
    return chat


def _model(body: dict[str, Any], message: AnyRequest, chat: ChatRequest, read: Reader) -> None:
    model = read.string(body, "model", "model") or ""
    models = read.strings(body, "models", "models")
    offset = 0
    if not model and models:
        model, offset = models[0], 1
        chat.renames["model"] = "models[0]"
    fallbacks = models[offset:]
    message.model = model
    message.fallback_models.extend(fallbacks)
    chat.renames["fallback_models"] = "models"
    for i in range(len(fallbacks)):
        chat.renames[f"fallback_models[{i}]"] = f"models[{i + offset}]"


def _sampling(body: dict[str, Any], message: AnyRequest, chat: ChatRequest, read: Reader) -> None:
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        value = read.number(body, name, name)
        if value is not None:
            setattr(message, name, value)
    for name in ("top_k", "top_logprobs", "n"):
        number = read.integer(body, name, name)
        if number is not None:
            setattr(message, name, number)
    limit_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    limit = read.integer(body, limit_name, limit_name)
    if limit is not None:
        message.max_tokens = limit
        chat.renames["max_tokens"] = limit_name
    seed = read.integer(body, "seed", "seed", INT64)
    if seed is not None:
        message.seed = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        message.stop.append(stop)
    elif stop is not None:
        message.stop.extend(read.strings(body, "stop", "stop"))
    logprobs = read.boolean(body, "logprobs", "logprobs")
    if logprobs is not None:
        message.logprobs = logprobs
    parallel = read.boolean(body, "parallel_tool_calls", "parallel_tool_calls")
    if parallel is not None:
        message.parallel_tool_calls = parallel
    message.user = read.string(body, "user", "user") or ""


def _tools(body: dict[str, Any], message: AnyRequest, read: Reader) -> None:
    for i, tool in enumerate(read.array(body, "tools", "tools") or ()):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            read.bad(where, "must be an object")
            continue
        if tool.get("type", "function") != "function":
            read.bad(f"{where}.type", "only 'function' tools are supported")
            continue
        function = read.obj(tool, "function", f"{where}.function")
        if function is None:
            read.bad(f"{where}.function", "required")
            continue
        given = message.tools.add()
        given.name = read.string(function, "name", f"{where}.function.name") or ""
        given.description = (
            read.string(function, "description", f"{where}.function.description") or ""
        )
        parameters = read.obj(function, "parameters", f"{where}.function.parameters")
        if parameters is not None:
            given.parameters_json = orjson.dumps(parameters).decode()
    choice = body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        mode = read.one_of(body, "tool_choice", "tool_choice", TOOL_CHOICES)
        if mode is not None:
            message.tool_choice.mode = mode
        return
    function = read.obj(body, "tool_choice", "tool_choice")
    function = read.obj(function or {}, "function", "tool_choice.function")
    if function is not None:
        message.tool_choice.mode = router_pb2.ToolChoice.MODE_TOOL
        message.tool_choice.name = read.string(function, "name", "tool_choice.function.name") or ""


def _response_format(body: dict[str, Any], message: AnyRequest, read: Reader) -> None:
    fmt = read.obj(body, "response_format", "response_format")
    if fmt is None:
        return
    kind = read.one_of(fmt, "type", "response_format.type", FORMATS)
    if kind is None:
        return
    message.response_format.type = kind
    if kind != router_pb2.ResponseFormat.TYPE_JSON_SCHEMA:
        return
    schema = read.obj(fmt, "json_schema", "response_format.json_schema") or {}
    where = "response_format.json_schema"
    message.response_format.name = read.string(schema, "name", f"{where}.name") or ""
    message.response_format.strict = bool(read.boolean(schema, "strict", f"{where}.strict"))
    given = read.obj(schema, "schema", f"{where}.schema")
    if given is not None:
        message.response_format.schema_json = orjson.dumps(given).decode()


def _reasoning(body: dict[str, Any], message: AnyRequest, chat: ChatRequest, read: Reader) -> None:
    given = read.obj(body, "reasoning", "reasoning")
    effort = read.one_of(body, "reasoning_effort", "reasoning_effort", EFFORTS)
    if given is None and effort is None:
        return
    reasoning = router_pb2.Reasoning()
    given = given or {}
    inner = read.one_of(given, "effort", "reasoning.effort", EFFORTS)
    if inner is None and effort is not None:
        chat.renames["reasoning.effort"] = "reasoning_effort"
    chosen = inner if inner is not None else effort
    if chosen is not None:
        reasoning.effort = chosen
    budget = read.integer(given, "max_tokens", "reasoning.max_tokens")
    if budget is not None:
        reasoning.max_tokens = budget
    reasoning.exclude = bool(read.boolean(given, "exclude", "reasoning.exclude"))
    enabled = read.boolean(given, "enabled", "reasoning.enabled")
    if enabled is not None:
        reasoning.enabled = enabled
    message.reasoning.CopyFrom(reasoning)
