"""The ``system`` and ``messages`` of an Anthropic Messages request as router chat messages
(see :mod:`.anthropic_request` for what maps to what), each problem named by its JSON path."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from switchboard.common.v1 import common_pb2
from switchboard_router.canonical import ANTHROPIC_REASONING
from switchboard_router.edge.anthropic_paths import Origin, Origins

Problems = list[tuple[str, str]]
TTLS = {"5m": common_pb2.CacheControl.TTL_5M, "1h": common_pb2.CacheControl.TTL_1H}
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_BLOCKS = 4096  # content blocks in one turn (or system, or tool result)


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_text(value: Any) -> str | None:
    """``value`` as JSON text; None when it cannot be written (nested too deep)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return None


@dataclass
class Builder:
    """Collects the router messages and every problem found on the way."""

    problems: Problems = field(default_factory=list)
    messages: list[common_pb2.ChatMessage] = field(default_factory=list)
    origins: Origins = field(default_factory=Origins)

    def add(self, message: common_pb2.ChatMessage, origin: Origin) -> None:
        self.messages.append(message)
        self.origins.messages.append(origin)

    def problem(self, where: str, why: str) -> None:
        self.problems.append((where, why))

    def cache_control(self, block: dict[str, Any], where: str) -> common_pb2.CacheControl | None:
        given = block.get("cache_control")
        if given is None:
            return None
        where += ".cache_control"
        if not isinstance(given, dict) or given.get("type") != "ephemeral":
            self.problem(where, "must be {'type': 'ephemeral'} with an optional ttl")
            return None
        ttl = given.get("ttl", "5m")
        if ttl not in TTLS:
            self.problem(f"{where}.ttl", "must be '5m' or '1h'")
            return None
        return common_pb2.CacheControl(ttl=TTLS[ttl])

    def text_part(self, block: dict[str, Any], where: str) -> common_pb2.ContentPart | None:
        text = block.get("text")
        if not isinstance(text, str):
            self.problem(f"{where}.text", "must be a string")
            return None
        part = common_pb2.ContentPart(text=text)
        mark = self.cache_control(block, where)
        if mark is not None:
            part.cache_control.CopyFrom(mark)
        return part

    def image_part(self, block: dict[str, Any], where: str) -> common_pb2.ContentPart | None:
        source = block.get("source")
        where += ".source"
        if not isinstance(source, dict):
            self.problem(where, "must be an object")
            return None
        kind = source.get("type")
        if kind == "base64":
            media, data = source.get("media_type"), source.get("data")
            if media not in MEDIA_TYPES:
                self.problem(f"{where}.media_type", "must be one of " + ", ".join(MEDIA_TYPES))
                return None
            try:
                raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if not raw:
                self.problem(f"{where}.data", "must be base64 image data")
                return None
            image = common_pb2.ImagePart(data=raw, mime_type=media)
        elif kind == "url":
            url = source.get("url")
            if not isinstance(url, str):
                self.problem(f"{where}.url", "must be a string")
                return None
            image = common_pb2.ImagePart(url=url)
        else:
            self.problem(f"{where}.type", "must be 'base64' or 'url'")
            return None
        part = common_pb2.ContentPart(image=image)
        mark = self.cache_control(block, where.removesuffix(".source"))
        if mark is not None:
            part.cache_control.CopyFrom(mark)
        return part

    def system(self, system: Any) -> None:
        if system is None or system == "":
            return
        if isinstance(system, str):
            self.add(
                common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=system),
                Origin("system"),
            )
            return
        if not isinstance(system, list) or len(system) > MAX_BLOCKS:
            self.problem(
                "system", f"must be a string or a list of at most {MAX_BLOCKS} text blocks"
            )
            return
        message = common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM)
        origin = Origin("system")
        for k, block in enumerate(system):
            where = f"system[{k}]"
            if not isinstance(block, dict) or block.get("type") != "text":
                self.problem(where, "must be a text block")
                continue
            part = self.text_part(block, where)
            if part is not None:
                message.parts.append(part)
                origin.parts.append(where)
        if message.parts:
            self.add(message, origin)

    def turn(self, turn: Any, where: str) -> None:
        if not isinstance(turn, dict):
            self.problem(where, "must be an object")
            return
        role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "assistant"):
            self.problem(f"{where}.role", "must be 'user' or 'assistant'")
            return
        proto_role = common_pb2.ROLE_USER if role == "user" else common_pb2.ROLE_ASSISTANT
        if isinstance(content, str):
            message = common_pb2.ChatMessage(role=proto_role, content=content)
            self.add(message, Origin(where, tool_calls=[], parts=[]))
            return
        if not isinstance(content, list):
            self.problem(f"{where}.content", "must be a string or a list of content blocks")
            return
        if not content and role == "user":
            self.problem(f"{where}.content", "at least one content block is required")
            return
        if len(content) > MAX_BLOCKS:
            self.problem(f"{where}.content", f"at most {MAX_BLOCKS} content blocks")
            return
        if role == "user":
            self.user_blocks(content, where)
        else:
            self.assistant_blocks(content, where)

    def user_blocks(self, content: list[Any], where: str) -> None:
        pending = common_pb2.ChatMessage(role=common_pb2.ROLE_USER)
        origin = Origin(where)

        def flush() -> None:
            nonlocal pending, origin
            if pending.parts:
                self.add(pending, origin)
            pending, origin = common_pb2.ChatMessage(role=common_pb2.ROLE_USER), Origin(where)

        for k, block in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" or kind == "image":
                assert isinstance(block, dict)
                part = self.text_part(block, at) if kind == "text" else self.image_part(block, at)
                if part is not None:
                    pending.parts.append(part)
                    origin.parts.append(at)
            elif kind == "tool_result":
                assert isinstance(block, dict)
                flush()
                self.tool_result(block, at)
            else:
                self.problem(f"{at}.type", _unsupported(kind, "text, image or tool_result"))
        flush()

    def tool_result(self, block: dict[str, Any], where: str) -> None:
        call_id = block.get("tool_use_id")
        if not isinstance(call_id, str) or not call_id:
            self.problem(f"{where}.tool_use_id", "required")
            return
        message = common_pb2.ChatMessage(role=common_pb2.ROLE_TOOL, tool_call_id=call_id)
        origin = Origin(where)
        content = block.get("content", "")
        if isinstance(content, str):
            pieces: list[Any] = [{"type": "text", "text": content}]
            paths = [f"{where}.content"]
        elif isinstance(content, list) and len(content) <= MAX_BLOCKS:
            pieces, paths = content, [f"{where}.content[{k}]" for k in range(len(content))]
        else:
            self.problem(
                f"{where}.content", f"a string or a list of at most {MAX_BLOCKS} text blocks"
            )
            return
        for piece, at in zip(pieces, paths, strict=True):
            if not isinstance(piece, dict) or piece.get("type") != "text":
                kind = piece.get("type") if isinstance(piece, dict) else None
                self.problem(f"{at}.type", _unsupported(kind, "text (in a tool result)"))
                continue
            part = self.text_part(piece, at)
            if part is not None:
                message.parts.append(part)
                origin.parts.append(at)
        if not message.parts:  # an empty result: one empty text, as Anthropic takes it
            message.parts.append(common_pb2.ContentPart(text=""))
            origin.parts.append(f"{where}.content")
        mark = self.cache_control(block, where)  # on the block: the result's last part
        if mark is not None:
            message.parts[-1].cache_control.CopyFrom(mark)
        self.add(message, origin)

    def assistant_blocks(self, content: list[Any], where: str) -> None:
        message = common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT)
        origin = Origin(where)
        for k, block in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if not isinstance(block, dict):
                self.problem(at, "must be a content block")
            elif kind == "text":
                part = self.text_part(block, at)
                if part is not None:
                    message.parts.append(part)
                    origin.parts.append(at)
            elif kind == "tool_use":
                self.tool_use(block, at, message, origin)
            elif kind == "thinking":
                text, signature = block.get("thinking"), block.get("signature", "")
                if not isinstance(text, str) or not isinstance(signature, str):
                    self.problem(at, "thinking and signature must be strings")
                    continue
                message.reasoning_details.append(
                    common_pb2.ReasoningDetail(
                        format=ANTHROPIC_REASONING, text=text, signature=signature
                    )
                )
                origin.reasoning_details.append(at)
            elif kind == "redacted_thinking":
                data = block.get("data")
                if not isinstance(data, str):
                    self.problem(f"{at}.data", "must be a string")
                    continue
                message.reasoning_details.append(
                    common_pb2.ReasoningDetail(format=ANTHROPIC_REASONING, redacted_data=data)
                )
                origin.reasoning_details.append(at)
            else:
                expected = "text, tool_use, thinking or redacted_thinking"
                self.problem(f"{at}.type", _unsupported(kind, expected))
        self.add(message, origin)

    def tool_use(
        self,
        block: dict[str, Any],
        where: str,
        message: common_pb2.ChatMessage,
        origin: Origin,
    ) -> None:
        call_id, name, given = block.get("id"), block.get("name"), block.get("input", {})
        if not isinstance(call_id, str) or not isinstance(name, str):
            self.problem(where, "id and name must be strings")
            return
        arguments = json_text(given) if isinstance(given, dict) else None
        if arguments is None:
            self.problem(f"{where}.input", "must be a JSON object")
            return
        message.tool_calls.append(
            common_pb2.ToolCall(id=call_id, name=name, arguments_json=arguments)
        )
        origin.tool_calls.append(where)

    def mark_last(self, mark: common_pb2.CacheControl) -> None:
        """The top-level ``cache_control``: on the prompt's last text or image part."""
        for message in reversed(self.messages):
            if message.content and not message.parts:
                message.parts.append(common_pb2.ContentPart(text=message.content))
                message.content = ""
            for part in reversed(message.parts):
                if part.WhichOneof("kind") == "image" or part.text:
                    if not part.HasField("cache_control"):
                        part.cache_control.CopyFrom(mark)
                    return


def _unsupported(kind: Any, expected: str) -> str:
    if isinstance(kind, str):
        return f"{kind!r} blocks are not supported here (expected {expected})"
    return f"a content block with a type is required (expected {expected})"
