"""OpenAI chat completions bodies as router requests: every field lands where the gRPC port
would have it, wrong types are named by their JSON path, and the router's own checks name
JSON fields too."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.edge.door import checked
from switchboard_router.edge.openai_request import ChatRequest, chat_request
from switchboard_router.requests import parse_request

PNG = "data:image/png;base64,iVBORw0KGgo="


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]} | fields


def problems(given: dict[str, Any]) -> dict[str, str]:
    """What the edge says is wrong: its own reading, then the router's checks in JSON terms."""
    with pytest.raises(InvalidArgument) as caught:
        chat = chat_request(given)
        try:
            parse_request(checked(chat.request))
        except InvalidArgument as error:
            raise chat.in_json_terms(error) from None
    return dict(caught.value.violations)


def test_a_full_body_lands_in_the_grpc_request_field_by_field() -> None:
    chat = chat_request(
        body(
            stream=True,
            stream_options={"include_usage": True},
            messages=[
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "what is this?",
                            "cache_control": {"type": "ephemeral"},
                        },
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "look", "arguments": "{}"},
                        }
                    ],
                    "reasoning_details": [
                        {
                            "type": "reasoning.text",
                            "text": "t",
                            "signature": "s",
                            "format": "anthropic-claude-v1",
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            ],
            models=["anthropic/claude-haiku-4.5"],
            max_completion_tokens=64,
            max_tokens=9,
            temperature=0,
            top_p=0.5,
            stop="\n",
            seed=2**40,
            presence_penalty=-1,
            frequency_penalty=1.5,
            logprobs=True,
            top_logprobs=3,
            n=2,
            user="u-1",
            tools=[
                {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
            ],
            tool_choice={"type": "function", "function": {"name": "look"}},
            parallel_tool_calls=False,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            },
            reasoning_effort="low",
            provider={
                "order": ["openai"],
                "allow_fallbacks": False,
                "sort": "throughput",
                "max_price": {"prompt": 0.1, "completion": "2.5"},
                "data_collection": "deny",
                "zdr": True,
                "quantizations": ["fp8"],
                "require_parameters": True,
                "preferred_max_latency": {"p90": 2},
                "preferred_min_throughput": 50,
            },
            metadata={"unknown": "ignored"},
            transforms=["middle-out"],
        )
    )
    request = chat.request
    assert isinstance(request, router_pb2.StreamCompletionRequest)
    assert chat.stream and chat.include_usage
    assert [m.role for m in request.messages] == [
        common_pb2.ROLE_SYSTEM,
        common_pb2.ROLE_USER,
        common_pb2.ROLE_ASSISTANT,
        common_pb2.ROLE_TOOL,
    ]
    image = request.messages[1].parts[1].image
    assert (image.url, image.detail) == (PNG, common_pb2.IMAGE_DETAIL_LOW)
    assert request.messages[1].parts[0].HasField("cache_control")
    assert request.messages[2].tool_calls[0].name == "look"
    assert request.messages[2].reasoning_details[0].signature == "s"
    assert request.messages[3].tool_call_id == "c1"
    assert request.fallback_models == ["anthropic/claude-haiku-4.5"]
    assert request.max_tokens == 64  # max_completion_tokens wins over the older max_tokens
    assert request.HasField("temperature") and request.temperature == 0
    assert list(request.stop) == ["\n"] and request.seed == 2**40 and request.n == 2
    assert request.tool_choice.mode == router_pb2.ToolChoice.MODE_TOOL
    assert orjson.loads(request.response_format.schema_json) == {"type": "object"}
    assert request.reasoning.effort == router_pb2.Reasoning.EFFORT_LOW
    prefs = request.provider
    assert prefs.max_price.prompt_usd_per_mtok == "0.1" and not prefs.allow_fallbacks
    assert prefs.sort == router_pb2.PROVIDER_SORT_THROUGHPUT
    assert prefs.data_collection == router_pb2.DATA_COLLECTION_DENY
    assert prefs.preferred_max_latency.p90 == 2 and prefs.preferred_min_throughput.p50 == 50
    parsed = parse_request(checked(request))  # the router takes it as it is
    assert parsed.provider.zdr and parsed.n == 2


def test_without_stream_it_is_the_unary_request_and_models_alone_name_the_model() -> None:
    chat = chat_request({"models": ["a/b", "c/d"], "messages": [{"role": "user", "content": "x"}]})
    assert isinstance(chat.request, router_pb2.CreateCompletionRequest)
    assert chat.request.model == "a/b" and list(chat.request.fallback_models) == ["c/d"]


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"max_tokens": True}, "max_tokens", "must be an integer"),
        ({"max_completion_tokens": 10**30}, "max_completion_tokens", "from -2147483648"),
        ({"seed": 2**70}, "seed", "from -9223372036854775808"),
        ({"n": 1.5}, "n", "must be an integer"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"messages": "hi"}, "messages", "must be an array"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "one of"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
            "'text' or 'image_url'",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "only 'function'"),
        ({"tool_choice": "always"}, "tool_choice", "one of"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "one of"),
        ({"reasoning_effort": "max"}, "reasoning_effort", "one of"),
        ({"provider": {"sort": "cheapest"}}, "provider.sort", "one of"),
        ({"provider": {"max_price": {"prompt": -1}}}, "provider.max_price.prompt", "from 0"),
        ({"stop": ["a", 3]}, "stop[1]", "must be a string"),
    ],
)
def test_a_wrong_type_is_named_by_its_json_path(
    fields: dict[str, Any], field: str, why: str
) -> None:
    found = problems(body(**fields))
    assert field in found, found
    assert why in found[field]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": ""}, "model"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"models": ["a/b", "not a model"]}, "models[1]"),
        ({"model": "a/b", "models": ["not a model"]}, "models[0]"),
        ({"temperature": 3}, "temperature"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": "a\u0000b"}]},
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"tool_choice": "auto"}, "tool_choice"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"reasoning_effort": "low", "reasoning": {"max_tokens": 10}}, "reasoning.max_tokens"),
        ({"provider": {"max_price": {"prompt": "1e3"}}}, "provider.max_price.prompt"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_the_routers_own_checks_name_the_json_field(fields: dict[str, Any], field: str) -> None:
    assert field in problems(body(**fields))


def test_json_paths_of_grpc_fields() -> None:
    chat = ChatRequest(router_pb2.CreateCompletionRequest())
    assert (
        chat.json_field("messages[2].parts[1].image.detail")
        == "messages[2].content[1].image_url.detail"
    )
    assert (
        chat.json_field("messages[0].parts[0].cache_control.ttl")
        == "messages[0].content[0].cache_control.ttl"
    )
    assert chat.json_field("messages[0].reasoning_details[1].redacted_data") == (
        "messages[0].reasoning_details[1].data"
    )
    assert chat.json_field("provider.zdr") == "provider.zdr"
