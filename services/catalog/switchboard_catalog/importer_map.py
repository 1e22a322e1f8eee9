"""How ``genai-prices`` data maps onto the catalog, as data (see :mod:`.importer`).

One row per source provider that Switchboard can call: the catalog provider it becomes, its
wire format, base URL and dialect, and the author of its own models. Source providers without
a row are skipped (and listed as skipped): clouds that need their own auth (AWS Bedrock,
Azure, Databricks, Cloudflare), HuggingFace's router, hosts whose API Switchboard does not
speak. ``default=False`` rows are imported only when asked for by id (OpenRouter: a router
itself, with ~900 pass-through prices that would swamp the catalog).

Price keys: the genai-prices key, the :class:`switchboard_core.pricing.Rates` name it fills,
and the divisor that turns the source's unit into ours (``requests_kcount`` is per thousand
requests; the catalog's ``request_usd`` is per request). Keys the catalog cannot price are
either ignored with a stated reason (a tool Switchboard does not pass) or make the model
skipped (pricing it without them would undercharge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from switchboard.catalog.v1 import catalog_pb2


@dataclass(frozen=True, slots=True)
class ProviderRow:
    source_id: str  # genai-prices Provider.id
    catalog_id: str
    display_name: str
    api_format: catalog_pb2.ApiFormat.ValueType
    base_url: str
    dialect: str = ""
    # The author of models that no prefix in AUTHORS claims (the provider's own models).
    author: str = ""
    # Anthropic ids write versions with dashes ("claude-opus-4-6"); the catalog, like
    # OpenRouter, with dots ("anthropic/claude-opus-4.6").
    dotted_versions: bool = False
    # Imported without being named (``--provider``) when true.
    default: bool = True
    # Source models of this provider that the catalog's provider does not serve, and why.
    skip: re.Pattern[str] | None = None
    skip_reason: str = ""


_CHAT = catalog_pb2.API_FORMAT_OPENAI_CHAT

PROVIDERS: tuple[ProviderRow, ...] = (
    ProviderRow("openai", "openai", "OpenAI", _CHAT, "https://api.openai.com/v1", author="openai"),
    ProviderRow(
        "anthropic",
        "anthropic",
        "Anthropic",
        catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES,
        "https://api.anthropic.com/v1",
        author="anthropic",
        dotted_versions=True,
    ),
    ProviderRow(
        "google",
        "google",
        "Google AI Studio",
        catalog_pb2.API_FORMAT_GEMINI,
        "https://generativelanguage.googleapis.com/v1beta",
        author="google",
        # genai-prices' Google also lists Vertex AI's Claude models; AI Studio has none.
        skip=re.compile(r"^claude-"),
        skip_reason="a Vertex AI model; the catalog's Google is AI Studio",
    ),
    ProviderRow("groq", "groq", "Groq", _CHAT, "https://api.groq.com/openai/v1"),
    ProviderRow("together", "together", "Together AI", _CHAT, "https://api.together.xyz/v1"),
    ProviderRow(
        "fireworks", "fireworks", "Fireworks AI", _CHAT, "https://api.fireworks.ai/inference/v1"
    ),
    ProviderRow(
        "deepseek", "deepseek", "DeepSeek", _CHAT, "https://api.deepseek.com/v1", author="deepseek"
    ),
    ProviderRow(
        "mistral", "mistral", "Mistral AI", _CHAT, "https://api.mistral.ai/v1", author="mistralai"
    ),
    ProviderRow("x-ai", "xai", "xAI", _CHAT, "https://api.x.ai/v1", author="x-ai"),
    ProviderRow("cerebras", "cerebras", "Cerebras", _CHAT, "https://api.cerebras.ai/v1"),
    ProviderRow(
        "moonshotai",
        "moonshot",
        "Moonshot AI",
        _CHAT,
        "https://api.moonshot.ai/v1",
        author="moonshotai",
    ),
    ProviderRow(
        "openrouter",
        "openrouter",
        "OpenRouter",
        _CHAT,
        "https://openrouter.ai/api/v1",
        dialect="openrouter",
        default=False,
    ),
)

PROVIDERS_BY_CATALOG_ID = {row.catalog_id: row for row in PROVIDERS}
PROVIDERS_BY_SOURCE_ID = {row.source_id: row for row in PROVIDERS}

# A model's author from its slug's start (hosts serve other labs' models), first match wins.
AUTHORS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), author)
    for pattern, author in (
        (r"^(gpt-oss|gpt-|chatgpt-|o[134](-|$)|codex-)", "openai"),
        (r"^claude-", "anthropic"),
        (r"^(gemini|gemma)", "google"),
        (r"^(meta-)?llama|^codellama", "meta-llama"),
        (r"^(mistral|mixtral|codestral|devstral|magistral|ministral|pixtral|voxtral)", "mistralai"),
        (r"^deepseek", "deepseek"),
        (r"^qwen", "qwen"),
        (r"^(kimi|moonshot)", "moonshotai"),
        (r"^(zai-)?glm", "z-ai"),
        (r"^grok", "x-ai"),
        (r"^minimax", "minimax"),
        (r"^nemotron", "nvidia"),
    )
)

# Models that are not chat models (embeddings, speech, images, realtime, fine-tune
# templates, legacy completions), by their source id: Switchboard relays chat only.
NOT_CHAT = re.compile(
    r"embed|tts|transcribe|realtime|whisper|moderation|image|ocr|(^|-)live|orpheus|voice"
    r"|robotics|deep-research|computer-use|davinci|babbage|curie|^ada$"
)
# Source ids that name no callable model: fine-tune templates (``ft:gpt-4o``) and variants
# (``mistral-nemo:free``, ``gpt-4o:extended``).
NOT_A_MODEL = re.compile(r"^ft:|\.ft-|-$|:")

# genai-prices key -> (Rates name, divisor from the source's unit to the catalog's).
PRICE_KEYS: dict[str, tuple[str, int]] = {
    "input_mtok": ("prompt", 1),
    "output_mtok": ("completion", 1),
    "cache_read_mtok": ("cached_prompt", 1),
    "cache_write_mtok": ("cache_write", 1),
    "cache_write_1h_mtok": ("cache_write_1h", 1),
    "input_audio_mtok": ("audio_prompt", 1),
    "cache_audio_read_mtok": ("cached_audio", 1),
    "output_audio_mtok": ("audio_completion", 1),
    "input_image_mtok": ("image_prompt", 1),
    "input_video_mtok": ("video_prompt", 1),
    "output_reasoning_mtok": ("reasoning", 1),
    "requests_kcount": ("request", 1000),
    "web_searches_kcount": ("web_search", 1000),
}

# Keys left out of an imported price, and why (the model is still imported).
IGNORED_KEYS: dict[str, str] = {
    "storage_searches_kcount": "OpenAI's file-search tool, which Switchboard does not pass",
}

# Keys the catalog cannot price: a model that has one is skipped with this reason.
UNSUPPORTED_KEYS: dict[str, str] = {
    "output_image_mtok": "bills image output",
    "output_video_mtok": "bills video output",
    "audio_hours": "bills audio by the hour",
    "input_audio_hours": "bills audio input by the hour",
    "input_document_kpages": "bills documents by the page",
    "input_annotated_document_kpages": "bills documents by the page",
    "input_mchars": "bills by the character",
    "input_text_messages_kcount": "bills by the message",
    "output_citation_mtok": "bills citation tokens apart",
    "cache_image_read_mtok": "bills cached image tokens apart from cached text",
}

MODALITIES_IN: dict[str, str] = {
    "input_audio_mtok": "audio",
    "input_image_mtok": "image",
    "input_video_mtok": "video",
}
MODALITIES_OUT: dict[str, str] = {"output_audio_mtok": "audio"}

ONE = Decimal(1)
