"""What an end user's API key may read in metering: its own account's data, nothing else.

The router forwards its caller's own API key (:data:`switchboard_core.rpc_owners.
FORWARDED_AUTHORIZATION`, accepted from the router's service identity only), and the
interceptor makes that key the call's principal (a :class:`TenantPrincipal`). Every
account-scoped read asks this module before answering. Anything outside the key's account is
``NOT_FOUND`` with exactly the error an unknown id gets, so a tenant cannot tell another
account's key, generation or account from one that does not exist. A key's account is the one
it was created in (``api_keys.account_id``), as the account usage queries count it. Operators
and services are not scoped: every check passes for them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from switchboard.metering.v1 import metering_pb2
from switchboard_core.auth import TenantPrincipal, current_principal
from switchboard_core.errors import NotFound
from switchboard_metering.keys import KeyStore, account_not_found, key_not_found


def current_tenant() -> TenantPrincipal | None:
    """The calling API key, when the call is a tenant's (forwarded by the router)."""
    principal = current_principal()
    return principal if isinstance(principal, TenantPrincipal) else None


def generation_not_found(generation_id: str) -> NotFound:
    return NotFound(f"generation {generation_id!r} not found")


class TenantScope:
    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    async def key(self, key_id: str) -> None:
        """NOT_FOUND, as for an unknown key, unless ``key_id`` is one of the calling
        tenant's account's keys. An empty id is left to the handler's validation."""
        tenant = current_tenant()
        if tenant is None or not key_id:
            return
        if await self._keys.account_of(key_id) != tenant.account_id:
            raise key_not_found(key_id)

    def account(self, account_id: str) -> None:
        """NOT_FOUND unless ``account_id`` is the calling tenant's own account (whether the
        other account exists or not)."""
        tenant = current_tenant()
        if tenant is not None and account_id and account_id != tenant.account_id:
            raise account_not_found(account_id)

    async def generation(
        self,
        generation_id: str,
        fetch: Callable[[str], Awaitable[metering_pb2.GetGenerationResponse]],
    ) -> metering_pb2.GetGenerationResponse:
        """``fetch(generation_id)``; for a tenant, only a generation of one of its account's
        keys, and one same NOT_FOUND for unknown ids and other accounts' generations."""
        tenant = current_tenant()
        if tenant is None:
            return await fetch(generation_id)
        try:
            reply = await fetch(generation_id)
        except NotFound:
            raise generation_not_found(generation_id) from None
        if await self._keys.account_of(reply.generation.key_id) != tenant.account_id:
            raise generation_not_found(generation_id)
        return reply
