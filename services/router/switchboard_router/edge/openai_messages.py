"""The ``messages`` of an OpenAI chat completions body as ``ChatMessage`` values.

Roles: ``system`` and ``developer`` (OpenAI's newer name for it) are system messages; ``user``,
``assistant`` and ``tool`` are themselves; the legacy ``function`` role is refused. Content is
a string, ``null`` (an assistant turn that only calls tools) or an array of parts: ``text``
(with OpenRouter's ``cache_control``) and ``image_url`` (an https or ``data:`` URL, with
``detail``). An assistant turn carries its ``tool_calls`` and the ``reasoning_details`` it was
given (sent back as they came, OpenRouter's way); a ``tool`` turn its ``tool_call_id``.
"""

from __future__ import annotations

from typing import Any

import orjson

from switchboard.common.v1 import common_pb2
from switchboard_router.edge.openai_json import Reader

ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "developer": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}
DETAILS = {
    "auto": common_pb2.IMAGE_DETAIL_AUTO,
    "low": common_pb2.IMAGE_DETAIL_LOW,
    "high": common_pb2.IMAGE_DETAIL_HIGH,
}
TTLS = {"5m": common_pb2.CacheControl.TTL_5M, "1h": common_pb2.CacheControl.TTL_1H}


def messages(body: dict[str, Any], read: Reader) -> list[common_pb2.ChatMessage]:
    out = []
    for i, given in enumerate(read.array(body, "messages", "messages") or ()):
        where = f"messages[{i}]"
        if not isinstance(given, dict):
            read.bad(where, "must be an object")
            out.append(common_pb2.ChatMessage())  # keeps the indexes of the rest
            continue
        out.append(_message(given, where, read))
    return out


def _message(given: dict[str, Any], where: str, read: Reader) -> common_pb2.ChatMessage:
    message = common_pb2.ChatMessage()
    role = read.one_of(given, "role", f"{where}.role", ROLES)
    if role is not None:
        message.role = role
    elif "role" not in given:
        read.bad(f"{where}.role", "required")
    content = given.get("content")
    if isinstance(content, str):
        message.content = content
    elif isinstance(content, list):
        message.parts.extend(_parts(content, f"{where}.content", read))
    elif content is not None:
        read.bad(f"{where}.content", "must be a string, an array of parts or null")
    message.name = read.string(given, "name", f"{where}.name") or ""
    message.tool_call_id = read.string(given, "tool_call_id", f"{where}.tool_call_id") or ""
    for j, call in enumerate(read.array(given, "tool_calls", f"{where}.tool_calls") or ()):
        message.tool_calls.append(_tool_call(call, f"{where}.tool_calls[{j}]", read))
    details = read.array(given, "reasoning_details", f"{where}.reasoning_details") or ()
    for j, detail in enumerate(details):
        message.reasoning_details.append(
            _reasoning_detail(detail, f"{where}.reasoning_details[{j}]", read)
        )
    return message


def _parts(items: list[Any], where: str, read: Reader) -> list[common_pb2.ContentPart]:
    out = []
    for j, item in enumerate(items):
        here = f"{where}[{j}]"
        part = common_pb2.ContentPart()
        out.append(part)  # one part per item, so the router's paths name the same index
        if not isinstance(item, dict):
            read.bad(here, "must be an object")
            continue
        kind = read.string(item, "type", f"{here}.type")
        if kind == "text":
            part.text = read.string(item, "text", f"{here}.text") or ""
        elif kind == "image_url":
            _image(item, here, part, read)
        elif kind is not None:
            read.bad(f"{here}.type", "'text' or 'image_url' (other kinds are not supported)")
        else:
            read.bad(f"{here}.type", "required")
        cache = read.obj(item, "cache_control", f"{here}.cache_control")
        if cache is not None:
            ttl = read.one_of(cache, "ttl", f"{here}.cache_control.ttl", TTLS)
            part.cache_control.ttl = ttl or common_pb2.CacheControl.TTL_UNSPECIFIED
    return out


def _image(item: dict[str, Any], here: str, part: common_pb2.ContentPart, read: Reader) -> None:
    image = item.get("image_url")
    if isinstance(image, str):  # some clients send the URL alone
        part.image.url = image
        return
    given = read.obj(item, "image_url", f"{here}.image_url")
    if given is None:
        read.bad(f"{here}.image_url", "required")
        return
    part.image.url = read.string(given, "url", f"{here}.image_url.url") or ""
    detail = read.one_of(given, "detail", f"{here}.image_url.detail", DETAILS)
    if detail is not None:
        part.image.detail = detail


def _tool_call(call: Any, where: str, read: Reader) -> common_pb2.ToolCall:
    out = common_pb2.ToolCall()
    if not isinstance(call, dict):
        read.bad(where, "must be an object")
        return out
    out.id = read.string(call, "id", f"{where}.id") or ""
    out.signature = read.string(call, "signature", f"{where}.signature") or ""
    function = read.obj(call, "function", f"{where}.function") or {}
    out.name = read.string(function, "name", f"{where}.function.name") or ""
    arguments = function.get("arguments")
    if isinstance(arguments, dict):  # an object where OpenAI has its JSON text: the same
        out.arguments_json = orjson.dumps(arguments).decode()
    else:
        out.arguments_json = read.string(function, "arguments", f"{where}.function.arguments") or ""
    return out


def _reasoning_detail(detail: Any, where: str, read: Reader) -> common_pb2.ReasoningDetail:
    out = common_pb2.ReasoningDetail()
    if not isinstance(detail, dict):
        read.bad(where, "must be an object")
        return out
    out.format = read.string(detail, "format", f"{where}.format") or ""
    out.text = (
        read.string(detail, "text", f"{where}.text")
        or read.string(detail, "summary", f"{where}.summary")
        or ""
    )
    out.signature = read.string(detail, "signature", f"{where}.signature") or ""
    out.redacted_data = read.string(detail, "data", f"{where}.data") or ""
    return out
