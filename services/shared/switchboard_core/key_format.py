"""The two kinds of secret keys, told apart by their prefix, and how they are stored.

- Inference (API) keys, ``sk-sb-v1-`` + 43 URL-safe characters: an end user's key; it runs
  completions and reads its own account's data, on the router's port.
- Operator (management) keys, ``sk-sb-op-`` + 43 URL-safe characters: an operator's or an
  automation's key; it calls admin RPCs within its scopes, on any service's port.

Only the SHA-256 (hex) of a secret is ever stored; a secret is shown once, when created.
Secrets are never logged.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets

INFERENCE_PREFIX = "sk-sb-v1-"
OPERATOR_PREFIX = "sk-sb-op-"
# How much of a secret is kept to recognise it ("sk-sb-v1-AbCd").
SHOWN_PREFIX_LENGTH = 14
# token_urlsafe(32) is 43 characters of the URL-safe base64 alphabet.
_BODY = r"[A-Za-z0-9_-]{43}"


class KeyKind(enum.Enum):
    INFERENCE = INFERENCE_PREFIX
    OPERATOR = OPERATOR_PREFIX


_PATTERNS = {kind: re.compile(re.escape(kind.value) + _BODY) for kind in KeyKind}


def kind_of(secret: str) -> KeyKind | None:
    """The kind of a well-formed secret; None for anything else."""
    for kind, pattern in _PATTERNS.items():
        if pattern.fullmatch(secret):
            return kind
    return None


def new_secret(kind: KeyKind) -> str:
    return kind.value + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def shown_prefix(secret: str) -> str:
    return secret[:SHOWN_PREFIX_LENGTH]
