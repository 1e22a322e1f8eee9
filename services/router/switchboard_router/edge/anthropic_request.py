"""An Anthropic Messages request (``POST /v1/messages``) as a router request.

The JSON is checked for shape here (types, required fields, what Switchboard does not take),
every problem named by its JSON path; the values are then checked by the router's own
:func:`~switchboard_router.requests.parse_request`, exactly as on the gRPC port, and its field
paths are given back in the JSON's names (:meth:`Origins.rename`).

What maps to what (https://docs.claude.com/en/api/messages):

- ``system`` (a string or text blocks) is a system message; ``messages`` turns are user and
  assistant messages. A user turn's ``tool_result`` blocks become tool messages (its other
  blocks a user message, in block order); an assistant turn's ``tool_use`` blocks its tool
  calls, its ``thinking`` / ``redacted_thinking`` blocks its reasoning details (format
  ``anthropic-claude-v1``), sent back to Anthropic verbatim.
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` as they are;
  ``metadata.user_id`` is ``user``; ``tools`` (custom tools) and ``tool_choice`` (``auto``,
  ``any``, ``tool``, ``none``; ``disable_parallel_tool_use``: ``parallel_tool_calls`` false).
- ``thinking``: ``enabled`` with ``budget_tokens`` is a reasoning budget, ``disabled`` no
  reasoning, ``adaptive`` the provider's default amount; ``display: "omitted"`` relays no
  reasoning text (signed blocks still come back). ``output_config.effort`` is the reasoning
  effort unless ``thinking`` sets a budget or turns it off (``xhigh`` and ``max`` are high);
  ``output_config.format`` (a JSON schema) the response format.
- ``cache_control`` on text, image and tool_result blocks marks a prompt prefix to cache; the
  top-level ``cache_control`` marks the last block of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.edge.anthropic_content import Builder, is_int, is_number, json_text
from switchboard_router.edge.anthropic_paths import Origins
from switchboard_router.requests import MAX_MESSAGES, MAX_TOOLS

Problems = list[tuple[str, str]]
INT32_MAX = 2**31 - 1
MAX_USER_ID_CHARS = 512
# Accepted and ignored: they steer Anthropic's own capacity, which Switchboard does not run.
IGNORED_FIELDS = frozenset({"service_tier", "inference_geo", "speed"})
KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
    }
)
TOOL_CHOICES = {
    "auto": router_pb2.ToolChoice.MODE_AUTO,
    "any": router_pb2.ToolChoice.MODE_REQUIRED,
    "tool": router_pb2.ToolChoice.MODE_TOOL,
    "none": router_pb2.ToolChoice.MODE_NONE,
}
EFFORTS = {
    "low": router_pb2.Reasoning.EFFORT_LOW,
    "medium": router_pb2.Reasoning.EFFORT_MEDIUM,
    "high": router_pb2.Reasoning.EFFORT_HIGH,
    "xhigh": router_pb2.Reasoning.EFFORT_HIGH,
    "max": router_pb2.Reasoning.EFFORT_HIGH,
}


def _ranged_int(body: dict[str, Any], name: str, problems: Problems, *, low: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not is_int(value) or not low <= value <= INT32_MAX:
        problems.append((name, f"must be an integer from {low} to {INT32_MAX}"))
        return None
    return int(value)


def _sampling(
    body: dict[str, Any], request: router_pb2.StreamCompletionRequest, problems: Problems
) -> None:
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        problems.append(("max_tokens", "required"))
    else:
        value = _ranged_int(body, "max_tokens", problems)
        if value is not None:
            request.max_tokens = value
    for name in ("temperature", "top_p"):
        given = body.get(name)
        if given is None:
            continue
        if is_number(given):
            setattr(request, name, float(given))
        else:
            problems.append((name, "must be a number"))
    top_k = _ranged_int(body, "top_k", problems)
    if top_k is not None:
        request.top_k = top_k
    stop = body.get("stop_sequences")
    if stop is not None:
        if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            request.stop.extend(stop)
        else:
            problems.append(("stop_sequences", "must be a list of strings"))
    metadata = body.get("metadata")
    if metadata is not None:
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        if not isinstance(metadata, dict) or not isinstance(user, str | None):
            problems.append(("metadata.user_id", "must be a string"))
        elif user is not None and len(user) > MAX_USER_ID_CHARS:
            problems.append(("metadata.user_id", f"at most {MAX_USER_ID_CHARS} characters"))
        elif user:
            request.user = user


def _tools(
    body: dict[str, Any], request: router_pb2.StreamCompletionRequest, problems: Problems
) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        problems.append(("tools", "must be a list of tools"))
        tools = None
    elif tools is not None and len(tools) > MAX_TOOLS:
        problems.append(("tools", f"at most {MAX_TOOLS} tools"))
        tools = None
    for k, tool in enumerate(tools or ()):
        where = f"tools[{k}]"
        if not isinstance(tool, dict):
            problems.append((where, "must be an object"))
            continue
        if tool.get("type") not in (None, "custom"):
            problems.append((f"{where}.type", "only custom tools are supported (no server tools)"))
            continue
        name, description, schema = (
            tool.get("name"),
            tool.get("description", ""),
            tool.get("input_schema"),
        )
        if not isinstance(name, str):
            problems.append((f"{where}.name", "must be a string"))
            continue
        if not isinstance(description, str):
            problems.append((f"{where}.description", "must be a string"))
            continue
        text = json_text(schema) if isinstance(schema, dict) else None
        if text is None:
            problems.append((f"{where}.input_schema", "must be a JSON Schema object"))
            continue
        request.tools.append(
            router_pb2.Tool(name=name, description=description, parameters_json=text)
        )
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or kind not in TOOL_CHOICES:
        problems.append(("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'"))
        return
    request.tool_choice.mode = TOOL_CHOICES[kind]
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            problems.append(("tool_choice.name", "required with type 'tool'"))
        else:
            request.tool_choice.name = name
    if choice.get("disable_parallel_tool_use") is True:
        request.parallel_tool_calls = False


def _thinking(
    body: dict[str, Any], request: router_pb2.StreamCompletionRequest, problems: Problems
) -> None:
    thinking, config = body.get("thinking"), body.get("output_config")
    budgeted = False
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if not isinstance(thinking, dict) or kind not in ("enabled", "disabled", "adaptive"):
            problems.append(("thinking.type", "must be 'enabled', 'disabled' or 'adaptive'"))
            return
        reasoning = request.reasoning
        reasoning.SetInParent()
        if kind == "disabled":
            reasoning.enabled = False
            budgeted = True  # no effort either
        elif kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not is_int(budget) or not 1 <= budget <= INT32_MAX:
                problems.append(("thinking.budget_tokens", f"an integer from 1 to {INT32_MAX}"))
                return
            reasoning.max_tokens = budget
            budgeted = True
        display = thinking.get("display")
        if display not in (None, "summarized", "omitted"):
            problems.append(("thinking.display", "must be 'summarized' or 'omitted'"))
        reasoning.exclude = display == "omitted"
    if config is None:
        return
    if not isinstance(config, dict):
        problems.append(("output_config", "must be an object"))
        return
    effort = config.get("effort")
    if effort is not None:
        if effort not in EFFORTS:
            problems.append(("output_config.effort", "must be one of " + ", ".join(EFFORTS)))
        elif not budgeted:
            request.reasoning.effort = EFFORTS[effort]
    fmt = config.get("format")
    if fmt is not None:
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        text = json_text(schema) if isinstance(schema, dict) else None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or text is None:
            problems.append(
                ("output_config.format", "must be {'type': 'json_schema', 'schema': {...}}")
            )
            return
        request.response_format.CopyFrom(
            router_pb2.ResponseFormat(
                type=router_pb2.ResponseFormat.TYPE_JSON_SCHEMA,
                name="output",
                schema_json=text,
                strict=True,
            )
        )


@dataclass(frozen=True)
class Translated:
    request: router_pb2.StreamCompletionRequest
    stream: bool
    origins: Origins


def translate(body: dict[str, Any]) -> Translated:
    """The router request ``body`` asks for; InvalidArgument naming each problem otherwise."""
    builder = Builder()
    problems = builder.problems
    unknown = sorted(set(body) - KNOWN_FIELDS - IGNORED_FIELDS)
    problems.extend((name, "is not supported by Switchboard") for name in unknown)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        problems.append(("model", "required: a model id such as 'switchboard/demo'"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        problems.append(("stream", "must be true or false"))
    request = router_pb2.StreamCompletionRequest(model=model if isinstance(model, str) else "")
    _sampling(body, request, problems)
    _tools(body, request, problems)
    _thinking(body, request, problems)
    builder.system(body.get("system"))
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        problems.append(("messages", "at least one message is required"))
    elif len(turns) > MAX_MESSAGES:  # the router's bound, before any work
        problems.append(("messages", f"at most {MAX_MESSAGES} messages"))
    else:
        for i, turn in enumerate(turns):
            builder.turn(turn, f"messages[{i}]")
    top_mark = builder.cache_control(body, "")
    if top_mark is not None:
        builder.mark_last(top_mark)
    if problems:
        raise InvalidArgument([(f.lstrip("."), why) for f, why in problems])
    request.messages.extend(builder.messages)
    return Translated(request, stream is True, builder.origins)
