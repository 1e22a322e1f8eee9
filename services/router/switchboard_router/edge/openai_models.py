"""``GET /v1/models``: the models the calling key can use, in OpenAI's list shape (``id``,
``object: "model"``, ``created``, ``owned_by``) with OpenRouter's fields beside them
(``name``, ``description``, ``context_length``, ``architecture``, ``pricing``,
``top_provider``, ``supported_parameters``).

``pricing`` is OpenRouter's: USD per token (per request, image or search for those), as
decimal strings, of the model's cheapest endpoint by prompt price. The list is
:meth:`AccountReads.list_models`' (the key's allow-lists applied), read page by page until
its end.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import account_pb2
from switchboard_core.money import format_usd
from switchboard_router.account import AccountReads

PAGE_SIZE = 500
MAX_PAGES = 200  # 100,000 models: far past any catalog, and a bound on a paging bug
MILLION = Decimal(1_000_000)
# OpenRouter's pricing keys: (field of common.v1.Pricing, per million tokens?).
PRICES = {
    "prompt": ("prompt_usd_per_mtok", True),
    "completion": ("completion_usd_per_mtok", True),
    "input_cache_read": ("cached_prompt_usd_per_mtok", True),
    "input_cache_write": ("cache_write_usd_per_mtok", True),
    "internal_reasoning": ("reasoning_usd_per_mtok", True),
    "request": ("request_usd", False),
    "image": ("image_usd", False),
    "web_search": ("web_search_usd", False),
}


async def usable_models(account: AccountReads) -> list[catalog_pb2.Model]:
    """Every model the caller may use (the principal set by the door's check)."""
    models: list[catalog_pb2.Model] = []
    token = ""
    for _ in range(MAX_PAGES):
        request = account_pb2.ListModelsRequest(page_size=PAGE_SIZE, page_token=token)
        reply = await account.list_models(request)
        models.extend(reply.models)
        token = reply.next_page_token
        if not token:
            break
    return models


def _price(text: str, per_million: bool) -> str:
    if not text:
        return "0"
    amount = Decimal(text)
    return format_usd(amount / MILLION if per_million else amount)


def pricing(prices: common_pb2.Pricing) -> dict[str, str]:
    out = {key: _price(getattr(prices, name), scale) for key, (name, scale) in PRICES.items()}
    if not prices.cached_prompt_usd_per_mtok:
        out["input_cache_read"] = out["prompt"]
    if not prices.reasoning_usd_per_mtok:
        out["internal_reasoning"] = out["completion"]
    return out


def model_json(model: catalog_pb2.Model) -> dict[str, Any]:
    endpoints = list(model.endpoints)
    cheapest = min(
        endpoints, key=lambda e: Decimal(e.pricing.prompt_usd_per_mtok or "0"), default=None
    )
    parameters = sorted({p for e in endpoints for p in e.supported_parameters})
    inputs, outputs = list(model.input_modalities), list(model.output_modalities)
    top = {
        "context_length": cheapest.context_length if cheapest else model.context_length,
        "max_completion_tokens": (cheapest.max_completion_tokens or None) if cheapest else None,
        "is_moderated": False,
    }
    return {
        "id": model.id,
        "object": "model",
        "created": model.update_time.seconds,
        "owned_by": model.id.partition("/")[0],
        "name": model.display_name or model.id,
        "description": model.description,
        "context_length": model.context_length,
        "architecture": {
            "modality": f"{'+'.join(inputs) or 'text'}->{'+'.join(outputs) or 'text'}",
            "input_modalities": inputs,
            "output_modalities": outputs,
        },
        "pricing": pricing(cheapest.pricing) if cheapest else {},
        "top_provider": top,
        "supported_parameters": parameters,
        "providers": sorted({e.provider_id for e in endpoints}),
    }


def models_json(models: list[catalog_pb2.Model]) -> dict[str, Any]:
    return {"object": "list", "data": [model_json(m) for m in models]}
