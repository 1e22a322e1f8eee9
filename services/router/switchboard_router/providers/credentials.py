"""Provider credentials, each bound to the hosts its provider declares.

The catalog says where a provider lives (its ``base_url``); the router's operator says which
key to send it (``SWITCHBOARD_PROVIDER_KEY_<ID>``). A catalog write must not be able to send
that key, and tenants' prompts, somewhere else. So a provider's key goes only to one of the
provider's declared hosts: the official API hosts in :data:`DECLARED_HOSTS` (as the seed
lists them), or, replacing them, ``SWITCHBOARD_PROVIDER_HOSTS_<ID>=host1,host2`` set on the
router (a local proxy, a regional endpoint, a test fake). Hosts match exactly (case aside) on
any port.

:meth:`ProviderCredentials.lookup` decides, before anything is sent, for one endpoint:

- the provider has a key and the base URL's host is declared: the key;
- the provider has a key and the host is not declared: nothing is sent to that endpoint
  (:class:`Withheld`, ``host_not_declared``), whatever the adapter; a warning is logged with
  the provider and the host;
- no key, and the adapter requires one: nothing is sent (``not_configured``);
- no key, and the adapter can do without (vLLM, Ollama, the demo upstream): an empty key.
  The upstream address policy still applies to those (``providers/http.py``).

When no endpoint is left, :func:`withheld_error` says why: ``FAILED_PRECONDITION`` with
``PROVIDER_HOST_NOT_DECLARED`` (naming the provider, the host and the variable to set) or
``PROVIDER_NOT_CONFIGURED`` (naming the key variables).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from switchboard_core.config import Secret
from switchboard_core.errors import FailedPrecondition
from switchboard_core.upstreams import split_base_url
from switchboard_router.config import PROVIDER_HOSTS_PREFIX, PROVIDER_KEY_PREFIX

log = logging.getLogger(__name__)

# Provider id (as it appears in variable names, lower case) -> its official API hosts.
# Sources: each provider's API reference, the same as data/seed.json's base URLs.
DECLARED_HOSTS: Mapping[str, frozenset[str]] = {
    "openai": frozenset({"api.openai.com"}),
    "anthropic": frozenset({"api.anthropic.com"}),
    "google": frozenset({"generativelanguage.googleapis.com"}),
    "together": frozenset({"api.together.xyz"}),
    "groq": frozenset({"api.groq.com"}),
    "fireworks": frozenset({"api.fireworks.ai"}),
    "deepinfra": frozenset({"api.deepinfra.com"}),
    "mistral": frozenset({"api.mistral.ai"}),
    "deepseek": frozenset({"api.deepseek.com"}),
}


def env_name(provider_id: str) -> str:
    """``deep-infra`` -> ``DEEP_INFRA``: how a provider id appears in a variable's name."""
    return provider_id.replace("-", "_").upper()


@dataclass(frozen=True, slots=True)
class Withheld:
    """Why nothing was sent to an endpoint of ``provider_id``."""

    provider_id: str
    reason: Literal["not_configured", "host_not_declared"]
    host: str = ""


class ProviderCredentials:
    """Keys (``provider_keys`` of the router config) and the hosts each may be sent to
    (``provider_hosts``: per provider, replacing :data:`DECLARED_HOSTS`). Both are keyed by
    the provider id as it appears in variable names, lower case."""

    def __init__(
        self,
        keys: Mapping[str, Secret],
        hosts: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._keys = keys
        self._hosts = {
            **DECLARED_HOSTS,
            **{name: frozenset(h.lower() for h in found) for name, found in (hosts or {}).items()},
        }

    def declared_hosts(self, provider_id: str) -> frozenset[str]:
        return self._hosts.get(env_name(provider_id).lower(), frozenset())

    def lookup(self, provider_id: str, base_url: str, *, required: bool) -> Secret | Withheld:
        """The key to send with a request to ``base_url``, or why nothing may be sent."""
        key = self._keys.get(env_name(provider_id).lower(), Secret(""))
        if not key:
            return Withheld(provider_id, "not_configured") if required else key
        try:
            host = split_base_url(base_url).host
        except ValueError:
            host = "(an invalid base URL)"
        if host in self.declared_hosts(provider_id):
            return key
        log.warning(
            "provider credential withheld: the endpoint's host is not declared",
            extra={"provider": provider_id, "host": host, "variable": hosts_variable(provider_id)},
        )
        return Withheld(provider_id, "host_not_declared", host)


def hosts_variable(provider_id: str) -> str:
    return f"{PROVIDER_HOSTS_PREFIX}{env_name(provider_id)}"


def withheld_error(withheld: Iterable[Withheld]) -> FailedPrecondition:
    """The error for a request whose every endpoint was withheld (``withheld`` not empty)."""
    undeclared = {w.provider_id: w.host for w in withheld if w.reason == "host_not_declared"}
    if undeclared:
        names = sorted(undeclared)
        where = "; ".join(
            f"{p} is pointed at {undeclared[p]}, which is not one of its declared hosts"
            f" (to send its credential there, set {hosts_variable(p)}={undeclared[p]}"
            " on the router)"
            for p in names
        )
        return FailedPrecondition(
            f"the router did not send the request: {where}",
            reason="PROVIDER_HOST_NOT_DECLARED",
            metadata={
                "providers": ",".join(names),
                "hosts": ",".join(undeclared[p] for p in names),
            },
        )
    names = sorted({w.provider_id for w in withheld})
    variables = ", ".join(f"{PROVIDER_KEY_PREFIX}{env_name(p)}" for p in names)
    return FailedPrecondition(
        f"no credential is configured for {', '.join(names)}: the router needs {variables}",
        reason="PROVIDER_NOT_CONFIGURED",
        metadata={"providers": ",".join(names)},
    )
