"""Validate a gRPC completion request into a canonical :class:`CompletionRequest`.

Every problem is collected and reported together in one ``INVALID_ARGUMENT`` whose
``BadRequest`` names each field by its proto path. A part's ``cache_control`` becomes its
``cache`` (``CACHE_5M`` / ``CACHE_1H``), under the rules :mod:`.request_options` states; the
``provider`` object is :mod:`.provider_prefs`'s.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import orjson

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.catalog_ids import MODEL_ID
from switchboard_core.errors import InvalidArgument
from switchboard_router.canonical import (
    CompletionRequest,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from switchboard_router.provider_prefs import NO_PREFS, provider_prefs
from switchboard_router.request_options import (
    MAX_SIGNATURE_CHARS,
    CacheMark,
    block_size,
    cache_mark,
    check_cache_marks,
    reasoning_config,
    reasoning_details,
    sampling_options,
)

MAX_MESSAGES = 2048
MAX_CONTENT_BYTES = 32 * 1024 * 1024  # text, images and tool arguments together
MAX_TOOLS = 128
# Tool schemas, tool-call arguments and response schemas nest at most this deep: enough for
# any real schema, and well inside what providers' bodies can hold (orjson stops at 255 levels,
# Python's json at its recursion limit).
MAX_JSON_DEPTH = 64
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_NAME_RULE = "1 to 64 letters, digits, '_' or '-'"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
IMAGE_DETAILS = {
    common_pb2.IMAGE_DETAIL_UNSPECIFIED: "",
    common_pb2.IMAGE_DETAIL_LOW: "low",
    common_pb2.IMAGE_DETAIL_HIGH: "high",
    common_pb2.IMAGE_DETAIL_AUTO: "auto",
}
TOOL_CHOICE_MODES = {
    router_pb2.ToolChoice.MODE_AUTO: ToolChoiceMode.AUTO,
    router_pb2.ToolChoice.MODE_NONE: ToolChoiceMode.NONE,
    router_pb2.ToolChoice.MODE_REQUIRED: ToolChoiceMode.REQUIRED,
    router_pb2.ToolChoice.MODE_TOOL: ToolChoiceMode.TOOL,
}
RESPONSE_FORMATS = {
    router_pb2.ResponseFormat.TYPE_TEXT: ResponseFormatKind.TEXT,
    router_pb2.ResponseFormat.TYPE_JSON_OBJECT: ResponseFormatKind.JSON_OBJECT,
    router_pb2.ResponseFormat.TYPE_JSON_SCHEMA: ResponseFormatKind.JSON_SCHEMA,
}
# The roles a message may have, by their proto number.
ROLES = {role.value: role for role in Role}
MAX_STOP = 4
MAX_FALLBACKS = 5
PENALTIES = ("frequency_penalty", "presence_penalty")

AnyCompletionRequest = router_pb2.StreamCompletionRequest | router_pb2.CreateCompletionRequest


def parse_request(request: AnyCompletionRequest) -> CompletionRequest:
    problems: list[tuple[str, str]] = []
    _check_model("model", request.model, problems)
    messages = _messages(request, problems)
    # Each optional field is read once, for its check and for the result (a proto field read
    # costs about as much as the check, measured).
    max_tokens = _optional(request, "max_tokens")
    temperature = _optional(request, "temperature")
    top_p = _optional(request, "top_p")
    top_k = _optional(request, "top_k")
    stop = tuple(request.stop)
    fallback_models = tuple(request.fallback_models)
    if max_tokens is not None and max_tokens < 1:
        problems.append(("max_tokens", "must be at least 1"))
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        problems.append(("temperature", "must be between 0 and 2"))
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        problems.append(("top_p", "must be greater than 0 and at most 1"))
    if len(stop) > MAX_STOP:
        problems.append(("stop", f"at most {MAX_STOP} sequences"))
    problems.extend((f"stop[{i}]", "must not be empty") for i, s in enumerate(stop) if not s)
    if len(fallback_models) > MAX_FALLBACKS:
        problems.append(("fallback_models", f"at most {MAX_FALLBACKS} models"))
    for i, model in enumerate(fallback_models):
        _check_model(f"fallback_models[{i}]", model, problems)
    if top_k is not None and top_k < 1:
        problems.append(("top_k", "must be at least 1"))
    penalties = {name: _optional(request, name) for name in PENALTIES}
    for name, value in penalties.items():
        if value is not None and not (math.isfinite(value) and -2 <= value <= 2):
            problems.append((name, "must be between -2 and 2"))
    tools = _tools(request, problems)
    tool_choice = _tool_choice(request, tools, problems)
    response_format = _response_format(request, problems)
    # Most requests send no provider object: its defaults, without reading every field.
    prefs = provider_prefs(request.provider, problems) if request.HasField("provider") else NO_PREFS
    reasoning = reasoning_config(request, problems)
    logprobs, top_logprobs, n = sampling_options(request, problems)
    if problems:
        raise InvalidArgument(problems)
    return CompletionRequest(
        model=request.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop,
        seed=_optional(request, "seed"),
        frequency_penalty=penalties["frequency_penalty"],
        presence_penalty=penalties["presence_penalty"],
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=_optional(request, "parallel_tool_calls"),
        response_format=response_format,
        reasoning=reasoning,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        n=n,
        user=request.user,
        fallback_models=fallback_models,
        provider=prefs,
    )


def _optional(request: AnyCompletionRequest, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None  # type: ignore[arg-type]


def _check_model(field: str, model: str, problems: list[tuple[str, str]]) -> None:
    if not model:
        problems.append((field, "required"))
    elif len(model) > 160 or not MODEL_ID.fullmatch(model):
        problems.append((field, "expected a model id like 'openai/gpt-4o-mini'"))


def _messages(
    request: AnyCompletionRequest, problems: list[tuple[str, str]]
) -> tuple[Message, ...]:
    if not request.messages:
        problems.append(("messages", "at least one message is required"))
    elif len(request.messages) > MAX_MESSAGES:
        problems.append(("messages", f"at most {MAX_MESSAGES} messages"))
    out = []
    size = 0
    marks: list[CacheMark] = []
    for i, m in enumerate(request.messages):
        field = f"messages[{i}]"
        number = m.role
        if number not in ROLES:
            problems.append((f"{field}.role", "must be SYSTEM, USER, ASSISTANT or TOOL"))
            continue
        role = ROLES[number]  # the member itself: Role(number) costs a call per use
        if role == Role.TOOL and not m.tool_call_id:
            problems.append((f"{field}.tool_call_id", "required for ROLE_TOOL"))
        if m.tool_call_id and role != Role.TOOL:
            problems.append((f"{field}.tool_call_id", "only ROLE_TOOL messages answer a call"))
        parts = _parts(m, role, field, problems, marks)
        calls = _tool_calls(m, role, field, problems)
        blocks = reasoning_details(m, role, field, problems)
        if not m.content and not m.parts and not calls and role != Role.ASSISTANT:
            problems.append((f"{field}.content", "required"))
        for part in parts:
            size += _part_size(part)
        for call in calls:
            size += len(call.arguments) + len(call.signature)
        for block in blocks:
            size += block_size(block)
        out.append(Message(role, parts, m.name, m.tool_call_id, calls, blocks))
    if size > MAX_CONTENT_BYTES:
        problems.append(("messages", f"content larger than {MAX_CONTENT_BYTES} bytes"))
    if marks:  # the rules are about marks: a request without any has nothing to check
        check_cache_marks(marks, problems)
    return tuple(out)


def _part_size(part: Part) -> int:
    if isinstance(part, TextPart):
        return len(part.text)
    return len(part.url) + len(part.data)


def _parts(
    m: common_pb2.ChatMessage,
    role: Role,
    field: str,
    problems: list[tuple[str, str]],
    marks: list[CacheMark],
) -> tuple[Part, ...]:
    """The message's parts; their cache marks are added to ``marks``."""
    content, parts = m.content, m.parts
    if content and parts:
        problems.append((f"{field}.parts", "set content or parts, not both"))
    if not parts:
        return (TextPart(content),) if content else ()
    out: list[Part] = []
    for j, part in enumerate(parts):
        where = f"{field}.parts[{j}]"
        kind = part.WhichOneof("kind")
        cache = cache_mark(part, where, problems)
        if cache:
            marks.append(CacheMark(where, cache, role == Role.SYSTEM))
        if kind == "text":
            out.append(TextPart(part.text, cache))
        elif kind == "image":
            if role != Role.USER:
                problems.append((f"{where}.image", "images are allowed in ROLE_USER messages"))
            image = _image(part.image, f"{where}.image", problems)
            if image is not None:
                out.append(dataclasses.replace(image, cache=cache) if cache else image)
        else:
            problems.append((where, "set text or image"))
    return tuple(out)


def _image(
    image: common_pb2.ImagePart, field: str, problems: list[tuple[str, str]]
) -> ImagePart | None:
    detail = IMAGE_DETAILS.get(image.detail)
    if detail is None:
        problems.append((f"{field}.detail", "unknown detail"))
    if image.url and image.data:
        problems.append((field, "set url or data, not both"))
        return None
    if image.data:
        if image.mime_type not in IMAGE_TYPES:
            problems.append((f"{field}.mime_type", "must be one of " + ", ".join(IMAGE_TYPES)))
            return None
        return ImagePart(data=image.data, mime_type=image.mime_type, detail=detail or "")
    if not image.url:
        problems.append((field, "set url or data"))
        return None
    part = ImagePart(url=image.url, mime_type=image.mime_type, detail=detail or "")
    if image.url.startswith("data:"):
        inline = part.inline()
        if inline is None or inline[0] not in IMAGE_TYPES:
            problems.append(
                (f"{field}.url", "a data URL must be 'data:<image type>;base64,<data>'")
            )
            return None
    elif not image.url.startswith(("https://", "http://")) or len(image.url) > 4096:
        problems.append((f"{field}.url", "must be an http(s) URL or a data URL"))
        return None
    return part


def _tool_calls(
    m: common_pb2.ChatMessage, role: Role, field: str, problems: list[tuple[str, str]]
) -> tuple[ToolCall, ...]:
    if not m.tool_calls:
        return ()
    if role != Role.ASSISTANT:
        problems.append((f"{field}.tool_calls", "only ROLE_ASSISTANT messages make tool calls"))
        return ()
    out = []
    for j, call in enumerate(m.tool_calls):
        where = f"{field}.tool_calls[{j}]"
        if not call.id:
            problems.append((f"{where}.id", "required"))
        if not TOOL_NAME.fullmatch(call.name):
            problems.append((f"{where}.name", TOOL_NAME_RULE))
        arguments = call.arguments_json or "{}"
        if _json_object(arguments) is None:
            problems.append((f"{where}.arguments_json", "must be the JSON text of an object"))
        if len(call.signature) > MAX_SIGNATURE_CHARS:
            problems.append((f"{where}.signature", f"at most {MAX_SIGNATURE_CHARS} characters"))
        out.append(ToolCall(call.id, call.name, arguments, call.signature))
    return tuple(out)


def _json_object(text: str) -> dict[str, Any] | None:
    """The object ``text`` holds, or None: also for what the adapters could not send on (NaN,
    infinities, lone surrogates; nesting deeper than :data:`MAX_JSON_DEPTH`)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or _json_depth(value) > MAX_JSON_DEPTH:
        return None
    return value


def _json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (without recursion: it may be deep)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def _tools(request: AnyCompletionRequest, problems: list[tuple[str, str]]) -> tuple[Tool, ...]:
    if not request.tools:
        return ()
    if len(request.tools) > MAX_TOOLS:
        problems.append(("tools", f"at most {MAX_TOOLS} tools"))
    out = []
    seen: set[str] = set()
    for i, tool in enumerate(request.tools):
        if not TOOL_NAME.fullmatch(tool.name):
            problems.append((f"tools[{i}].name", TOOL_NAME_RULE))
        elif tool.name in seen:
            problems.append((f"tools[{i}].name", f"{tool.name!r} is given twice"))
        seen.add(tool.name)
        schema = _json_object(tool.parameters_json or '{"type": "object", "properties": {}}')
        if schema is None:
            problems.append((f"tools[{i}].parameters_json", "must be a JSON Schema object"))
            schema = {}
        out.append(Tool(tool.name, tool.description, schema))
    return tuple(out)


def _tool_choice(
    request: AnyCompletionRequest, tools: tuple[Tool, ...], problems: list[tuple[str, str]]
) -> ToolChoice | None:
    choice = request.tool_choice
    mode = TOOL_CHOICE_MODES.get(choice.mode)
    if choice.mode and mode is None:
        problems.append(("tool_choice.mode", "unknown mode"))
    if mode is None:
        if choice.name:
            problems.append(("tool_choice.mode", "MODE_TOOL is required with a name"))
        return None
    if not tools:
        problems.append(("tool_choice", "requires tools"))
        return None
    if mode == ToolChoiceMode.TOOL:
        if choice.name not in {t.name for t in tools}:
            problems.append(("tool_choice.name", "must name one of the request's tools"))
    elif choice.name:
        problems.append(("tool_choice.name", "only with MODE_TOOL"))
    return ToolChoice(mode, choice.name if mode == ToolChoiceMode.TOOL else "")


def _response_format(
    request: AnyCompletionRequest, problems: list[tuple[str, str]]
) -> ResponseFormat | None:
    fmt = request.response_format
    kind = RESPONSE_FORMATS.get(fmt.type)
    if fmt.type and kind is None:
        problems.append(("response_format.type", "unknown type"))
    if kind is None or kind == ResponseFormatKind.TEXT:
        return None
    if kind == ResponseFormatKind.JSON_OBJECT:
        return ResponseFormat(kind)
    if not TOOL_NAME.fullmatch(fmt.name):
        problems.append(("response_format.name", TOOL_NAME_RULE))
    schema = _json_object(fmt.schema_json)
    if schema is None:
        problems.append(("response_format.schema_json", "must be a JSON Schema object"))
    return ResponseFormat(kind, fmt.name, schema, fmt.strict)
