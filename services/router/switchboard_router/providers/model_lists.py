"""Which models a provider still serves, as its own API lists them.

One row per wire format (:data:`LISTERS`, keyed like the adapter registry by ``api_format``):

- OpenAI and compatible hosts: ``GET {base}/models`` with the bearer key (when the host's
  dialect sends one), answering ``{"object": "list", "data": [{"id": ...}]}`` in one page
  (Together answers a bare JSON array of the same objects: read too).
  https://platform.openai.com/docs/api-reference/models/list
- Anthropic: ``GET {base}/models?limit=1000`` with ``x-api-key`` and ``anthropic-version``,
  answering ``{"data": [{"id", "type": "model"}], "has_more", "first_id", "last_id"}``; the
  next page is ``after_id=<last_id>`` while ``has_more``.
  https://docs.claude.com/en/api/models-list
- Gemini: ``GET {base}/models?pageSize=1000`` with ``x-goog-api-key``, answering
  ``{"models": [{"name": "models/<id>"}], "nextPageToken"}``; the next page is
  ``pageToken=<nextPageToken>`` while one is given. Ids are listed without ``models/``.
  https://ai.google.dev/api/models#method:-models.list

Bounded: at most ``max_pages`` pages and ``max_ids`` ids (a listing cut short says so:
``ModelList.complete`` is False), bodies of at most :data:`MAX_BODY_BYTES`, and ``timeout``
seconds for the whole listing. Requests go through the router's shared session
(``providers/http.py``), so the upstream address policy applies and redirects are refused.
Failures raise the adapters' :class:`~.base.UpstreamError` classes (the provider's own HTTP
error table); messages name the provider and never carry the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from switchboard.catalog.v1 import catalog_pb2
from switchboard_core.config import Secret
from switchboard_router.providers import anthropic_stream, gemini_errors, openai_stream
from switchboard_router.providers.anthropic_messages import API_VERSION as ANTHROPIC_VERSION
from switchboard_router.providers.base import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    parse_retry_after,
)
from switchboard_router.providers.http import (
    ErrorFromBody,
    UpstreamRedirectRefused,
    unreachable,
)
from switchboard_router.providers.openai_dialects import dialect_for

LIST_TIMEOUT_SECONDS = 15.0
MAX_PAGES = 20
MAX_IDS = 20_000
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ModelList:
    """The ids a provider listed; ``complete`` is False when the bounds cut the listing."""

    ids: frozenset[str]
    complete: bool = True
    pages: int = 1

    def serves(self, upstream_model: str) -> bool:
        """Whether an endpoint's ``upstream_model`` is listed (Gemini's ``models/`` prefix
        ignored on either side)."""
        return upstream_model in self.ids or upstream_model.removeprefix("models/") in self.ids


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[str]
    next_query: dict[str, str] | None  # the query of the next page; None on the last


def _openai_headers(key: Secret, dialect: str) -> dict[str, str]:
    if key and dialect_for(dialect).auth == "bearer":
        return {"Authorization": "Bearer " + key.reveal()}
    return {}


def _anthropic_headers(key: Secret, dialect: str) -> dict[str, str]:
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if key:
        headers["x-api-key"] = key.reveal()
    return headers


def _gemini_headers(key: Secret, dialect: str) -> dict[str, str]:
    return {"x-goog-api-key": key.reveal()} if key else {}


def _ids(items: Any, field: str, prefix: str = "") -> list[str]:
    if not isinstance(items, list):
        raise ValueError("the model list is not a JSON array")
    found = []
    for item in items:
        value = item.get(field) if isinstance(item, dict) else None
        if isinstance(value, str) and value:
            found.append(value.removeprefix(prefix))
    return found


def _openai_page(body: Any) -> Page:
    items = body.get("data") if isinstance(body, dict) else body
    return Page(_ids(items, "id"), None)


def _anthropic_page(body: Any) -> Page:
    if not isinstance(body, dict):
        raise ValueError("the model list is not a JSON object")
    last = body.get("last_id")
    more = body.get("has_more") is True and isinstance(last, str) and bool(last)
    return Page(_ids(body.get("data"), "id"), {"after_id": str(last)} if more else None)


def _gemini_page(body: Any) -> Page:
    if not isinstance(body, dict):
        raise ValueError("the model list is not a JSON object")
    token = body.get("nextPageToken")
    following = {"pageToken": token} if isinstance(token, str) and token else None
    return Page(_ids(body.get("models", []), "name", "models/"), following)


@dataclass(frozen=True, slots=True)
class Lister:
    """How one wire format lists models."""

    headers: Callable[[Secret, str], dict[str, str]]  # (key, dialect) -> headers
    first_query: Mapping[str, str]
    parse: Callable[[Any], Page]
    error_from_body: ErrorFromBody


LISTERS: Mapping[int, Lister] = {
    catalog_pb2.API_FORMAT_OPENAI_CHAT: Lister(
        _openai_headers, {}, _openai_page, openai_stream.error_from_body
    ),
    catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES: Lister(
        _anthropic_headers, {"limit": "1000"}, _anthropic_page, anthropic_stream.error_from_body
    ),
    catalog_pb2.API_FORMAT_GEMINI: Lister(
        _gemini_headers, {"pageSize": "1000"}, _gemini_page, gemini_errors.error_from_body
    ),
}


async def _read_bounded(response: aiohttp.ClientResponse, provider: str) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise UpstreamProtocolError(
                f"{provider}'s model list is over {MAX_BODY_BYTES} bytes", provider_id=provider
            )
    return bytes(body)


async def _get_page(
    session: aiohttp.ClientSession,
    url: str,
    query: Mapping[str, str],
    headers: dict[str, str],
    lister: Lister,
    provider: str,
) -> Page:
    try:
        async with session.get(
            url, params=dict(query), headers=headers, allow_redirects=False
        ) as response:
            if 300 <= response.status < 400:
                raise UpstreamRedirectRefused(
                    f"{provider} answered the model list with HTTP {response.status}, a"
                    " redirect, which is never followed",
                    provider_id=provider,
                    status=response.status,
                )
            payload = await _read_bounded(response, provider)
            if response.status != 200:
                retry = parse_retry_after(response.headers.get("retry-after"))
                raise lister.error_from_body(response.status, payload, provider, retry)
    except aiohttp.ClientError as error:
        raise unreachable(provider, error) from None
    try:
        return lister.parse(orjson.loads(payload))
    except (orjson.JSONDecodeError, ValueError) as error:
        raise UpstreamProtocolError(
            f"{provider} answered the model list with something else: {error}",
            provider_id=provider,
        ) from None


async def list_models(
    session: aiohttp.ClientSession,
    api_format: int,
    base_url: str,
    key: Secret,
    *,
    provider: str,
    dialect: str = "",
    timeout: float = LIST_TIMEOUT_SECONDS,
    max_pages: int = MAX_PAGES,
    max_ids: int = MAX_IDS,
) -> ModelList:
    """The model ids the provider at ``base_url`` lists (see the module doc); raises
    :class:`UpstreamError` when it cannot be asked or answers otherwise."""
    lister = LISTERS.get(api_format)
    if lister is None:
        raise UpstreamError(
            f"{provider}'s wire format ({api_format}) has no model list", provider_id=provider
        )
    url = base_url.rstrip("/") + "/models"
    headers = lister.headers(key, dialect)
    ids: set[str] = set()
    query: Mapping[str, str] | None = lister.first_query
    pages = 0
    cut = False
    try:
        async with asyncio.timeout(timeout):
            while query is not None and pages < max_pages and not cut:
                page = await _get_page(session, url, query, headers, lister, provider)
                pages += 1
                room = max_ids - len(ids)
                cut = len(page.ids) > room
                ids.update(page.ids[:room])
                query = page.next_query
    except TimeoutError:
        raise UpstreamTimeout(
            f"{provider} did not list its models within {timeout:g} s", provider_id=provider
        ) from None
    return ModelList(frozenset(ids), complete=query is None and not cut, pages=pages)
