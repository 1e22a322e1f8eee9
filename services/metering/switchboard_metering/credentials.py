"""How metering checks the credentials its callers present: in its own database.

Metering owns both kinds of keys, so it verifies them locally on every call (no cache: a
revoked operator key stops working at once). End users' API keys reach metering only when the
router forwards them (see :class:`switchboard_core.auth.Authenticator`).
"""

from __future__ import annotations

from switchboard_core.auth import OperatorPrincipal, TenantPrincipal
from switchboard_metering.keys import KeyStore
from switchboard_metering.operators import OperatorKeyStore


class LocalCredentials:
    def __init__(self, keys: KeyStore, operators: OperatorKeyStore) -> None:
        self._keys = keys
        self._operators = operators

    async def operator(self, secret: str) -> OperatorPrincipal:
        key = await self._operators.verify(secret)
        return OperatorPrincipal(key_id=key.id, scopes=frozenset(key.scopes))

    async def tenant(self, secret: str) -> TenantPrincipal:
        key = await self._keys.verify(secret)
        return TenantPrincipal(key_id=key.id, account_id=key.account_id, detail=key)
