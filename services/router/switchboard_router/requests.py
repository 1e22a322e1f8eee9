"""Validate a gRPC completion request into a canonical :class:`CompletionRequest`.

Every problem is collected and reported together in one ``INVALID_ARGUMENT`` whose
``BadRequest`` names each field by its proto path.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_core.money import MoneyFormatError, parse_usd
from switchboard_router.canonical import CompletionRequest, Message, ProviderPrefs, Role

MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:-]*$")
MAX_MESSAGES = 2048
MAX_CONTENT_CHARS = 4 * 1024 * 1024
MAX_STOP = 4
MAX_FALLBACKS = 5
SORTS = {
    router_pb2.PROVIDER_SORT_UNSPECIFIED: "",
    router_pb2.PROVIDER_SORT_PRICE: "price",
    router_pb2.PROVIDER_SORT_THROUGHPUT: "throughput",
    router_pb2.PROVIDER_SORT_LATENCY: "latency",
}

AnyCompletionRequest = router_pb2.StreamCompletionRequest | router_pb2.CreateCompletionRequest


def parse_request(request: AnyCompletionRequest) -> CompletionRequest:
    problems: list[tuple[str, str]] = []
    _check_model("model", request.model, problems)
    messages = _messages(request, problems)
    if request.HasField("max_tokens") and request.max_tokens < 1:
        problems.append(("max_tokens", "must be at least 1"))
    if request.HasField("temperature") and not (
        math.isfinite(request.temperature) and 0 <= request.temperature <= 2
    ):
        problems.append(("temperature", "must be between 0 and 2"))
    if request.HasField("top_p") and not (math.isfinite(request.top_p) and 0 < request.top_p <= 1):
        problems.append(("top_p", "must be greater than 0 and at most 1"))
    if len(request.stop) > MAX_STOP:
        problems.append(("stop", f"at most {MAX_STOP} sequences"))
    problems.extend(
        (f"stop[{i}]", "must not be empty") for i, s in enumerate(request.stop) if not s
    )
    if len(request.fallback_models) > MAX_FALLBACKS:
        problems.append(("fallback_models", f"at most {MAX_FALLBACKS} models"))
    for i, model in enumerate(request.fallback_models):
        _check_model(f"fallback_models[{i}]", model, problems)
    prefs = _prefs(request.provider, problems)
    if problems:
        raise InvalidArgument(problems)
    return CompletionRequest(
        model=request.model,
        messages=messages,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else None,
        top_p=request.top_p if request.HasField("top_p") else None,
        stop=tuple(request.stop),
        seed=request.seed if request.HasField("seed") else None,
        user=request.user,
        fallback_models=tuple(request.fallback_models),
        provider=prefs,
    )


def _check_model(field: str, model: str, problems: list[tuple[str, str]]) -> None:
    if not model:
        problems.append((field, "required"))
    elif len(model) > 160 or not MODEL_ID.match(model):
        problems.append((field, "expected a model id like 'openai/gpt-4o-mini'"))


def _messages(
    request: AnyCompletionRequest, problems: list[tuple[str, str]]
) -> tuple[Message, ...]:
    if not request.messages:
        problems.append(("messages", "at least one message is required"))
    elif len(request.messages) > MAX_MESSAGES:
        problems.append(("messages", f"at most {MAX_MESSAGES} messages"))
    out = []
    total = 0
    for i, m in enumerate(request.messages):
        role = int(m.role)
        if role not in (Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL):
            problems.append((f"messages[{i}].role", "must be SYSTEM, USER, ASSISTANT or TOOL"))
            continue
        if role == Role.TOOL and not m.tool_call_id:
            problems.append((f"messages[{i}].tool_call_id", "required for ROLE_TOOL"))
        total += len(m.content)
        out.append(Message(Role(role), m.content, m.name, m.tool_call_id))
    if total > MAX_CONTENT_CHARS:
        problems.append(("messages", f"content longer than {MAX_CONTENT_CHARS} characters"))
    return tuple(out)


def _price(field: str, text: str, problems: list[tuple[str, str]]) -> Decimal | None:
    if not text:
        return None
    try:
        return parse_usd(text)
    except MoneyFormatError as error:
        problems.append((field, str(error)))
        return None


def _prefs(p: router_pb2.ProviderPreferences, problems: list[tuple[str, str]]) -> ProviderPrefs:
    if p.sort not in SORTS:
        problems.append(("provider.sort", "unknown sort"))
    return ProviderPrefs(
        order=tuple(p.order),
        only=frozenset(p.only),
        ignore=frozenset(p.ignore),
        allow_fallbacks=p.allow_fallbacks if p.HasField("allow_fallbacks") else True,
        sort=SORTS.get(p.sort, ""),
        max_prompt_price=_price(
            "provider.max_price.prompt_usd_per_mtok", p.max_price.prompt_usd_per_mtok, problems
        ),
        max_completion_price=_price(
            "provider.max_price.completion_usd_per_mtok",
            p.max_price.completion_usd_per_mtok,
            problems,
        ),
        require_parameters=p.require_parameters,
    )
