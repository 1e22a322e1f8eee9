"""Token estimates for providers that report no usage, and for worst-case reservations."""

from __future__ import annotations

from collections.abc import Iterator

from switchboard_router.canonical import CompletionRequest, TextPart

# Characters counted per message for its role and framing.
MESSAGE_FRAMING_CHARS = 16
# Tokens counted for one image when estimating usage: OpenAI's high-detail 1024x1024 tile
# count is 765; other providers land in the same range (Anthropic ~1,600 at most, Gemini 258 a
# tile). Reservations count the most any of them charges.
IMAGE_TOKEN_ESTIMATE = 1000
IMAGE_TOKEN_MAX = 1600
# Reservations count a token per three UTF-8 bytes: generous for English (about four
# characters, four bytes, a token) and about right for CJK text (three bytes a character, about
# a token each), where four characters a token would undercount up to fourfold.
RESERVATION_BYTES_PER_TOKEN = 3


def estimate_tokens(chars: int) -> int:
    """About four characters a token: the usual estimate when a provider reports nothing."""
    return (chars + 3) // 4


def _prompt_texts(request: CompletionRequest) -> Iterator[str]:
    for m in request.messages:
        yield m.text
        for call in m.tool_calls:
            yield call.name
            yield call.arguments
    for tool in request.tools:
        yield tool.name
        yield tool.description
        yield str(tool.parameters)


def image_count(request: CompletionRequest) -> int:
    return sum(1 for m in request.messages for p in m.parts if type(p) is not TextPart)


def prompt_bytes(request: CompletionRequest) -> int:
    """The UTF-8 size of the prompt's text: messages, tool calls and tool definitions."""
    return sum(len(text.encode()) for text in _prompt_texts(request))


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """The prompt's likely token count, for usage a provider did not report."""
    chars = sum(map(len, _prompt_texts(request))) + MESSAGE_FRAMING_CHARS * len(request.messages)
    return estimate_tokens(chars) + image_count(request) * IMAGE_TOKEN_ESTIMATE


def reservation_prompt_tokens(request: CompletionRequest) -> int:
    """A generous prompt token count, for reserving a request's worst-case cost."""
    size = prompt_bytes(request) + MESSAGE_FRAMING_CHARS * len(request.messages)
    tokens = -(-size // RESERVATION_BYTES_PER_TOKEN)
    return tokens + image_count(request) * IMAGE_TOKEN_MAX
