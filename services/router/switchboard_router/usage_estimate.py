"""Token estimates for providers that report no usage, and for worst-case reservations."""

from __future__ import annotations

from switchboard_router.canonical import CompletionRequest, TextPart


def estimate_tokens(chars: int) -> int:
    """About four characters a token: the usual estimate when a provider reports nothing."""
    return (chars + 3) // 4


# Tokens counted for one image when estimating: OpenAI's high-detail 1024x1024 tile count is
# 765; other providers land in the same range (Anthropic ~1,600 at most, Gemini 258 a tile).
IMAGE_TOKEN_ESTIMATE = 1000


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    chars = 0
    images = 0
    for m in request.messages:
        chars += len(m.text) + 16  # role and framing
        chars += sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
        images += sum(1 for p in m.parts if type(p) is not TextPart)
    chars += sum(len(t.name) + len(t.description) + len(str(t.parameters)) for t in request.tools)
    return estimate_tokens(chars) + images * IMAGE_TOKEN_ESTIMATE
