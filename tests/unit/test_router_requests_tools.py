"""Multi-part messages, tools, tool choice and response format: parsed, or refused by field."""

from __future__ import annotations

import base64
import json

import pytest

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.canonical import (
    ImagePart,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolChoiceMode,
)
from switchboard_router.requests import parse_request

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER = router_pb2.Tool(
    name="get_weather",
    description="Weather in a city",
    parameters_json=json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
)


def request(**fields: object) -> router_pb2.StreamCompletionRequest:
    base: dict[str, object] = {
        "model": "openai/gpt-4o-mini",
        "messages": [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
    }
    base.update(fields)
    return router_pb2.StreamCompletionRequest(**base)  # type: ignore[arg-type]


def violations(message: router_pb2.StreamCompletionRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse_request(message)
    return dict(caught.value.violations)


def image_message(*parts: common_pb2.ContentPart, role: int = 2) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, parts=list(parts))  # type: ignore[arg-type]


def test_a_tool_conversation_becomes_canonical() -> None:
    parsed = parse_request(
        request(
            messages=[
                image_message(
                    common_pb2.ContentPart(text="What is in this picture?"),
                    common_pb2.ContentPart(
                        image=common_pb2.ImagePart(
                            data=PNG, mime_type="image/png", detail=common_pb2.IMAGE_DETAIL_LOW
                        )
                    ),
                ),
                common_pb2.ChatMessage(
                    role=common_pb2.ROLE_ASSISTANT,
                    tool_calls=[
                        common_pb2.ToolCall(
                            id="call_1", name="get_weather", arguments_json='{"city":"Oslo"}'
                        )
                    ],
                ),
                common_pb2.ChatMessage(
                    role=common_pb2.ROLE_TOOL, tool_call_id="call_1", content='{"temp_c": 4}'
                ),
            ],
            tools=[WEATHER],
            tool_choice=router_pb2.ToolChoice(
                mode=router_pb2.ToolChoice.MODE_TOOL, name="get_weather"
            ),
            parallel_tool_calls=False,
            response_format=router_pb2.ResponseFormat(
                type=router_pb2.ResponseFormat.TYPE_JSON_SCHEMA,
                name="answer",
                schema_json='{"type": "object"}',
                strict=True,
            ),
            top_k=40,
        )
    )
    first, call, result = parsed.messages
    assert first.parts[0] == TextPart("What is in this picture?")
    image = first.parts[1]
    assert isinstance(image, ImagePart) and image.inline() == ("image/png", PNG)
    assert image.detail == "low"
    assert image.as_url().startswith("data:image/png;base64,")
    assert call.role is Role.ASSISTANT and call.parts == ()
    assert call.tool_calls[0].arguments == '{"city":"Oslo"}'
    assert result.tool_call_id == "call_1" and result.text == '{"temp_c": 4}'
    assert parsed.tools[0].parameters["properties"]["city"] == {"type": "string"}
    assert parsed.tool_choice is not None and parsed.tool_choice.mode is ToolChoiceMode.TOOL
    assert parsed.parallel_tool_calls is False
    fmt = parsed.response_format
    assert fmt is not None and fmt.kind is ResponseFormatKind.JSON_SCHEMA and fmt.strict
    assert parsed.set_parameters() == {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "structured_outputs",
        "top_k",
    }
    bare = parsed.without(frozenset({"structured_outputs", "tools", "tool_choice", "top_k"}))
    assert bare.response_format is None and bare.tools == () and bare.tool_choice is None
    assert bare.top_k is None and bare.parallel_tool_calls is False
    assert bare.messages == parsed.messages  # history is never dropped


def test_json_mode_is_not_structured_outputs() -> None:
    parsed = parse_request(
        request(
            response_format=router_pb2.ResponseFormat(
                type=router_pb2.ResponseFormat.TYPE_JSON_OBJECT
            )
        )
    )
    assert parsed.set_parameters() == {"response_format"}
    text = parse_request(
        request(response_format=router_pb2.ResponseFormat(type=router_pb2.ResponseFormat.TYPE_TEXT))
    )
    assert text.response_format is None and text.set_parameters() == frozenset()


def test_bad_parts_are_named() -> None:
    problems = violations(
        request(
            messages=[
                common_pb2.ChatMessage(
                    role=common_pb2.ROLE_USER,
                    content="both",
                    parts=[common_pb2.ContentPart(text="x")],
                ),
                image_message(
                    common_pb2.ContentPart(),
                    common_pb2.ContentPart(image=common_pb2.ImagePart(data=PNG)),
                    common_pb2.ContentPart(image=common_pb2.ImagePart(url="ftp://x/y.png")),
                    common_pb2.ContentPart(image=common_pb2.ImagePart(url="data:text/plain,hi")),
                    common_pb2.ContentPart(
                        image=common_pb2.ImagePart(url="https://x/y.png", data=PNG)
                    ),
                ),
                image_message(
                    common_pb2.ContentPart(image=common_pb2.ImagePart(url="https://x/y.png")),
                    role=common_pb2.ROLE_ASSISTANT,
                ),
                common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM),
            ]
        )
    )
    assert problems == {
        "messages[0].parts": "set content or parts, not both",
        "messages[1].parts[0]": "set text or image",
        "messages[1].parts[1].image.mime_type": (
            "must be one of image/png, image/jpeg, image/gif, image/webp"
        ),
        "messages[1].parts[2].image.url": "must be an http(s) URL or a data URL",
        "messages[1].parts[3].image.url": "a data URL must be 'data:<image type>;base64,<data>'",
        "messages[1].parts[4].image": "set url or data, not both",
        "messages[2].parts[0].image": "images are allowed in ROLE_USER messages",
        "messages[3].content": "required",
    }


def test_bad_tool_calls_and_results_are_named() -> None:
    problems = violations(
        request(
            messages=[
                common_pb2.ChatMessage(
                    role=common_pb2.ROLE_USER,
                    content="hi",
                    tool_call_id="call_1",
                    tool_calls=[common_pb2.ToolCall(id="c", name="f")],
                ),
                common_pb2.ChatMessage(
                    role=common_pb2.ROLE_ASSISTANT,
                    tool_calls=[
                        common_pb2.ToolCall(name="has space", arguments_json="[1]"),
                    ],
                ),
            ]
        )
    )
    assert problems == {
        "messages[0].tool_call_id": "only ROLE_TOOL messages answer a call",
        "messages[0].tool_calls": "only ROLE_ASSISTANT messages make tool calls",
        "messages[1].tool_calls[0].id": "required",
        "messages[1].tool_calls[0].name": "1 to 64 letters, digits, '_' or '-'",
        "messages[1].tool_calls[0].arguments_json": "must be the JSON text of an object",
    }


def test_bad_tools_choice_and_format_are_named() -> None:
    problems = violations(
        request(
            tools=[
                WEATHER,
                WEATHER,
                router_pb2.Tool(name="x" * 65),
                router_pb2.Tool(name="ok", parameters_json="not json"),
            ],
            tool_choice=router_pb2.ToolChoice(mode=router_pb2.ToolChoice.MODE_TOOL, name="missing"),
            response_format=router_pb2.ResponseFormat(
                type=router_pb2.ResponseFormat.TYPE_JSON_SCHEMA, schema_json="[]"
            ),
            top_k=0,
            frequency_penalty=2.5,
            presence_penalty=float("nan"),
        )
    )
    assert problems == {
        "tools[1].name": "'get_weather' is given twice",
        "tools[2].name": "1 to 64 letters, digits, '_' or '-'",
        "tools[3].parameters_json": "must be a JSON Schema object",
        "tool_choice.name": "must name one of the request's tools",
        "response_format.name": "1 to 64 letters, digits, '_' or '-'",
        "response_format.schema_json": "must be a JSON Schema object",
        "top_k": "must be at least 1",
        "frequency_penalty": "must be between -2 and 2",
        "presence_penalty": "must be between -2 and 2",
    }


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # json.loads raised RecursionError: INTERNAL
        '{"a":' * 200 + "1" + "}" * 200,  # parsed, then orjson refused the provider body
        '{"type": "object", "description": "\\ud800"}',  # a lone surrogate, likewise
        '{"type": "object", "maximum": NaN}',
    ],
    ids=["100k-arrays", "200-objects", "lone-surrogate", "nan"],
)
def test_json_the_adapters_could_not_send_is_refused_by_field(text: str) -> None:
    """The arrays made json.loads raise RecursionError, so the router answered INTERNAL
    (found by tests/e2e/test_fuzz.py); the deep object and the surrogate parsed, and then
    orjson refused the provider body (INTERNAL too); NaN went upstream as null."""
    call = common_pb2.ToolCall(id="call_1", name="get_weather", arguments_json=text)
    problems = violations(
        request(
            messages=[
                common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi"),
                common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, tool_calls=[call]),
            ],
            tools=[router_pb2.Tool(name="deep", parameters_json=text)],
            response_format=router_pb2.ResponseFormat(
                type=router_pb2.ResponseFormat.TYPE_JSON_SCHEMA, name="deep", schema_json=text
            ),
        )
    )
    assert problems == {
        "messages[1].tool_calls[0].arguments_json": "must be the JSON text of an object",
        "tools[0].parameters_json": "must be a JSON Schema object",
        "response_format.schema_json": "must be a JSON Schema object",
    }
    nested = '{"a":' * 63 + "1" + "}" * 63  # 63 objects deep: taken
    assert parse_request(request(tools=[router_pb2.Tool(name="ok", parameters_json=nested)]))


def test_names_and_models_with_a_trailing_newline_are_refused() -> None:
    """``$`` matches before a final newline: ``match`` took ``"get_weather\\n"``."""
    problems = violations(
        request(
            model="openai/gpt-4o-mini\n",
            tools=[router_pb2.Tool(name="get_weather\n")],
        )
    )
    assert set(problems) == {"model", "tools[0].name"}


def test_tool_choice_needs_tools() -> None:
    problems = violations(
        request(tool_choice=router_pb2.ToolChoice(mode=router_pb2.ToolChoice.MODE_REQUIRED))
    )
    assert problems == {"tool_choice": "requires tools"}
    problems = violations(request(tool_choice=router_pb2.ToolChoice(name="get_weather")))
    assert problems == {"tool_choice.mode": "MODE_TOOL is required with a name"}
