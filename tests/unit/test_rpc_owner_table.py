"""The RPC owner table covers every RPC in the descriptors, and nothing else.

A new RPC added to a proto without an owner fails here (and the server refuses it); the
e2e auth matrix (tests/e2e/test_rpc_owners.py) proves the table is enforced."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from switchboard_core.auth import OperatorPrincipal
from switchboard_core.rpc_owners import (
    ALL_SCOPES,
    RPC_OWNERS,
    WRITE_SCOPES,
    Audit,
    Scope,
    known_scope,
)
from tests.rpc_methods import Rpc, all_rpcs


def test_every_rpc_in_every_descriptor_has_an_owner() -> None:
    missing = [rpc.path for rpc in all_rpcs() if rpc.path not in RPC_OWNERS]
    assert not missing, f"RPCs without an owner in switchboard_core.rpc_owners: {missing}"


def test_the_table_names_no_rpc_that_does_not_exist() -> None:
    known = {rpc.path for rpc in all_rpcs()}
    stale = sorted(set(RPC_OWNERS) - known)
    assert not stale, f"owners of RPCs that no descriptor has: {stale}"


@pytest.mark.parametrize("path", sorted(RPC_OWNERS))
def test_every_owner_is_someone(path: str) -> None:
    owner = RPC_OWNERS[path]
    assert owner.public or owner.services or owner.scope or owner.tenant
    if owner.public:  # public means public: nothing else to say
        assert not (owner.services or owner.scope or owner.tenant)


def test_only_health_and_reflection_are_public() -> None:
    public = {path.split("/")[1] for path, owner in RPC_OWNERS.items() if owner.public}
    assert public == {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_writes_are_never_granted_to_api_keys() -> None:
    """Inference keys can never call an admin RPC: no write is owned by tenants."""
    for path, owner in RPC_OWNERS.items():
        if owner.tenant and owner.scope is not None:
            assert owner.scope in (
                Scope.COMPLETIONS,
                Scope.USAGE_READ,
                Scope.KEYS_READ,
                Scope.CATALOG_READ,
            ), path


def test_star_holds_every_operator_scope_but_no_service_identity() -> None:
    root = OperatorPrincipal("opk_x", frozenset({ALL_SCOPES}))
    assert all(root.has(scope.value) for scope in Scope)
    assert not root.has("service:router")
    narrow = OperatorPrincipal("opk_y", frozenset({Scope.KEYS_READ.value}))
    assert narrow.has("keys:read")
    assert not narrow.has("keys:write")


@pytest.mark.parametrize(
    ("scope", "known"),
    [
        ("*", True),
        ("keys:write", True),
        ("service:router", True),
        ("service:nobody", False),
        ("keys:*", False),
        ("", False),
        ("KEYS:WRITE", False),
    ],
)
def test_known_scopes(scope: str, known: bool) -> None:
    assert known_scope(scope) is known


AUDITED = [
    rpc for rpc in all_rpcs() if RPC_OWNERS.get(rpc.path, None) and RPC_OWNERS[rpc.path].audit
]


def _audit(rpc: Rpc) -> Audit:
    audit = RPC_OWNERS[rpc.path].audit
    assert audit is not None
    return audit


def test_every_admin_write_is_audited() -> None:
    """An RPC owned by a write scope without an audit spec would change things unrecorded."""
    unaudited = [
        path
        for path, owner in RPC_OWNERS.items()
        if owner.scope in WRITE_SCOPES and owner.audit is None
    ]
    assert not unaudited, f"admin writes without an Audit in rpc_owners: {unaudited}"


def _field(message: Descriptor, path: str) -> FieldDescriptor:
    """The field at a dotted path, through singular message fields only."""
    field = None
    for index, name in enumerate(path.split(".")):
        field = message.fields_by_name.get(name)
        assert field is not None, f"{message.full_name} has no field {name!r} ({path})"
        if index < len(path.split(".")) - 1:
            assert field.message_type is not None, f"{path}: {name} is not a message"
            assert not field.is_repeated, f"{path}: {name} is repeated"
            message = field.message_type
    assert field is not None
    return field


def _secret_paths(message: Descriptor, prefix: str = "", depth: int = 0) -> list[str]:
    """Every field path of ``message`` whose name says it holds a secret."""
    found: list[str] = []
    for field in message.fields:
        path = f"{prefix}{field.name}"
        if "secret" in field.name or "password" in field.name:
            found.append(path)
        elif field.message_type is not None and depth < 6:
            found += _secret_paths(field.message_type, f"{path}.", depth + 1)
    return found


@pytest.mark.parametrize("rpc", AUDITED, ids=lambda rpc: rpc.path)
def test_audit_specs_fit_their_messages_and_never_record_a_secret(rpc: Rpc) -> None:
    audit = _audit(rpc)
    assert not (rpc.server_streaming or rpc.client_streaming), "only unary RPCs are audited"
    assert audit.kind and ":" not in audit.kind
    roots = {"request": rpc.method.input_type, "response": rpc.method.output_type}
    root, _, path = audit.target.partition(".")
    assert root in roots, f"target {audit.target!r} starts with request. or response."
    target = _field(roots[root], path)
    assert not target.is_repeated and target.message_type is None
    for path in audit.result:
        _field(rpc.method.output_type, path)
    for path in audit.redact:
        _field(rpc.method.input_type, path)
    named = [audit.target, *audit.result]
    assert not [p for p in named if "secret" in p], "a result or target names a secret"
    leaked = set(_secret_paths(rpc.method.input_type)) - set(audit.redact)
    assert not leaked, f"request fields holding secrets must be in Audit.redact: {leaked}"


def test_responses_with_secrets_are_recorded_only_through_named_fields() -> None:
    """CreateApiKey and CreateOperatorKey answer with the secret: the specs name the new
    key's public fields only (checked above), and a spec is what records a response."""
    creating = [rpc for rpc in AUDITED if _secret_paths(rpc.method.output_type)]
    assert {rpc.method.name for rpc in creating} >= {"CreateApiKey", "CreateOperatorKey"}
    for rpc in creating:
        assert _audit(rpc).result, f"{rpc.path}: record the new key's id, not the response"
