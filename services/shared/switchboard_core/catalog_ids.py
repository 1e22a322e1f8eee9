"""The shape of catalog ids, for every service that checks one: the catalog (its writes), the
router (requested models) and metering (API keys' allow-lists).

A provider id is a slug (``openai``, ``deep-infra``); a model id is ``<author>/<slug>``
(``openai/gpt-4o-mini``, ``deepseek/deepseek-r1:free``). A request may add a routing variant
to a model id (``:floor``, ``:nitro``, see :data:`MODEL_VARIANTS`), which is not part of the id. An
endpoint's quantization (``fp8``, ``bf16``) is a short lower-case label, the same for the
catalog (its writes) and the router (a request's ``provider.quantizations``).
"""

from __future__ import annotations

import re

PROVIDER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:-]*$")
MODEL_ID_MAX = 128
# Suffixes a request may add to a model id: ":floor" sorts by price, ":nitro" by throughput.
MODEL_VARIANTS = frozenset({"floor", "nitro"})
QUANTIZATION = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


def provider_id_problem(value: str) -> str | None:
    if not value:
        return "required"
    if not PROVIDER_ID.fullmatch(value):
        return "must match ^[a-z0-9][a-z0-9-]{0,63}$ (e.g. 'openai')"
    return None


def model_id_problem(value: str) -> str | None:
    if not value:
        return "required"
    if len(value) > MODEL_ID_MAX:
        return f"at most {MODEL_ID_MAX} characters"
    if not MODEL_ID.fullmatch(value):
        return "must look like '<author>/<slug>' (e.g. 'openai/gpt-4o-mini')"
    return None
