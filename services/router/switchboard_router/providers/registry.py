"""The explicit map from a provider's wire format to its adapter. The only place that
chooses by provider kind: add a format here, and nowhere else."""

from __future__ import annotations

import aiohttp

from switchboard.catalog.v1 import catalog_pb2
from switchboard_router.providers.anthropic_messages import AnthropicMessagesAdapter
from switchboard_router.providers.base import Adapter
from switchboard_router.providers.gemini import GeminiAdapter
from switchboard_router.providers.openai_chat import OpenAIChatAdapter


def build_adapters(session: aiohttp.ClientSession) -> dict[int, Adapter]:
    """One adapter instance per wire format, sharing the process's HTTP session."""
    return {
        catalog_pb2.API_FORMAT_OPENAI_CHAT: OpenAIChatAdapter(session),
        catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES: AnthropicMessagesAdapter(session),
        catalog_pb2.API_FORMAT_GEMINI: GeminiAdapter(session),
    }
