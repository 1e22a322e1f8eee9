"""Where each part of a router request came from in an Anthropic Messages request, so the
router's field paths (``messages[3].parts[1].image.url``) are named as the JSON names them
(``messages[2].content[1].source.url``): system messages and tool results make the router's
message numbers differ from the JSON's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from switchboard_core.errors import InvalidArgument


@dataclass
class Origin:
    """Where a router message came from: its JSON path, and each part's, call's and reasoning
    detail's."""

    path: str
    parts: list[str] = field(default_factory=list)
    tool_calls: list[str] = field(default_factory=list)
    reasoning_details: list[str] = field(default_factory=list)


# Router field names (after a message, part, call or detail path) and their JSON names.
_SUFFIXES = (
    (".image.mime_type", ".source.media_type"),
    (".image.url", ".source.url"),
    (".image.data", ".source.data"),
    (".image", ".source"),
    (".arguments_json", ".input"),
    (".tool_call_id", ".tool_use_id"),
    (".redacted_data", ".data"),
)
_TOP_LEVEL = (
    (re.compile(r"^stop(?=$|\[)"), "stop_sequences"),
    (re.compile(r"^tools\[(\d+)\]\.parameters_json"), r"tools[\1].input_schema"),
    (re.compile(r"^tool_choice\.mode"), "tool_choice.type"),
    (re.compile(r"^reasoning\.max_tokens"), "thinking.budget_tokens"),
    (re.compile(r"^reasoning\.enabled"), "thinking.type"),
    (re.compile(r"^reasoning\.effort"), "output_config.effort"),
    (re.compile(r"^reasoning$"), "thinking"),
    (re.compile(r"^response_format\.schema_json"), "output_config.format.schema"),
    (re.compile(r"^response_format"), "output_config.format"),
    (re.compile(r"^user$"), "metadata.user_id"),
)
_MESSAGE_PATH = re.compile(
    r"^messages\[(\d+)\](?:\.(parts|tool_calls|reasoning_details)\[(\d+)\])?"
)


@dataclass
class Origins:
    messages: list[Origin] = field(default_factory=list)

    def rename(self, path: str) -> str:
        """A router field path in the request JSON's names."""
        found = _MESSAGE_PATH.match(path)
        if found is None:
            for pattern, name in _TOP_LEVEL:
                if pattern.search(path):
                    return pattern.sub(name, path, count=1)
            return path
        index, kind, item = int(found[1]), found[2], found[3]
        if index >= len(self.messages):
            return path
        origin = self.messages[index]
        base = origin.path
        if kind is not None:
            paths: list[str] = getattr(origin, kind)
            base = paths[int(item)] if int(item) < len(paths) else base
        rest = path[found.end() :]
        if kind == "reasoning_details" and rest == ".text":
            rest = ".thinking"
        for router_name, json_name in _SUFFIXES:
            if rest.startswith(router_name):
                rest = json_name + rest[len(router_name) :]
                break
        return base + rest

    def renamed(self, error: InvalidArgument) -> InvalidArgument:
        """``error`` with its fields in the request JSON's names."""
        return InvalidArgument([(self.rename(f), why) for f, why in error.violations])
