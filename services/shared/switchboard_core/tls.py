"""Transport security: mutual TLS between the services, TLS on the router's public port.

Every service serves TLS with a certificate, key and CA read from files named in the
environment, and requires a client certificate signed by that CA: on the catalog's and
metering's ports a caller without one cannot even complete the handshake. A peer's *service
identity* is read from its certificate's URI SANs: ``spiffe://<trust domain>/<service>``
(``SWITCHBOARD_TRUST_DOMAIN``, default ``switchboard.local``), or the exact URIs given in
``SWITCHBOARD_SERVICE_IDS`` (``router=spiffe://cluster.local/ns/sb/sa/router,...``, for SPIFFE
IDs issued by SPIRE or cert-manager). A certificate without such a URI (an operator's client
certificate, say) proves only that its holder was issued one by the CA: its calls need an
operator key as well.

The router's port is public: it serves TLS without asking for client certificates (callers
authenticate with API keys), unless ``SWITCHBOARD_PUBLIC_TLS_CLIENT_CA`` asks for them. Its
certificate defaults to the router's own and may be another (``SWITCHBOARD_PUBLIC_TLS_CERT``,
``SWITCHBOARD_PUBLIC_TLS_KEY``), e.g. one from a public CA.

Plaintext is allowed only when asked for (``SWITCHBOARD_INSECURE_PLAINTEXT=true``, or
``SWITCHBOARD_PUBLIC_INSECURE_PLAINTEXT=true`` for the router's port alone, behind a TLS
terminating load balancer); the server logs a warning at start. Without certificates a
service proves who it is with a *service key*: an operator key holding the scope
``service:<name>`` (``SWITCHBOARD_SERVICE_KEY``), sent as a bearer token.

Key files are read once at start-up; rotate certificates by replacing the files and
restarting (rolling) the processes. Key material never appears in ``repr`` or logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from switchboard_core.config import EnvReader, Secret
from switchboard_core.rpc_owners import SERVICES

DEFAULT_TRUST_DOMAIN = "switchboard.local"


def spiffe_id(service: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/{service}"


@dataclass(frozen=True)
class TlsConfig:
    """What a process needs to serve and to call over (m)TLS."""

    plaintext: bool = False
    # PEM contents, read at start-up.
    cert: bytes = field(default=b"", repr=False)
    key: bytes = field(default=b"", repr=False)
    ca: bytes = field(default=b"", repr=False)
    # Whether callers must present a certificate signed by ``client_ca`` (default ``ca``).
    require_client_cert: bool = True
    client_ca: bytes = field(default=b"", repr=False)
    # Service name -> the URI its certificate carries.
    service_ids: Mapping[str, str] = field(default_factory=dict)
    # Plaintext only: this service's own service key, sent on its outgoing calls.
    service_key: Secret = field(default_factory=lambda: Secret(""))

    @classmethod
    def read(cls, reader: EnvReader) -> TlsConfig:
        """The service's TLS settings (every missing or unreadable file is reported)."""
        trust_domain = reader.str("SWITCHBOARD_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN)
        ids = {name: spiffe_id(name, trust_domain) for name in SERVICES}
        ids.update(_service_ids(reader))
        service_key = reader.secret("SWITCHBOARD_SERVICE_KEY")
        if reader.bool("SWITCHBOARD_INSECURE_PLAINTEXT", False):
            return cls(plaintext=True, service_ids=ids, service_key=service_key)
        cert = _pem(reader, "SWITCHBOARD_TLS_CERT")
        key = _pem(reader, "SWITCHBOARD_TLS_KEY")
        ca = _pem(reader, "SWITCHBOARD_TLS_CA")
        _check_pair(reader, "SWITCHBOARD_TLS_CERT", cert, key)
        _check_certificates(reader, "SWITCHBOARD_TLS_CA", ca)
        return cls(cert=cert, key=key, ca=ca, service_ids=ids, service_key=service_key)

    def for_public_port(self, reader: EnvReader) -> TlsConfig:
        """The router's serving settings: TLS without client certificates unless asked."""
        if reader.bool("SWITCHBOARD_PUBLIC_INSECURE_PLAINTEXT", False) or self.plaintext:
            return replace(self, plaintext=True)
        cert = _pem(reader, "SWITCHBOARD_PUBLIC_TLS_CERT", optional=True) or self.cert
        key = _pem(reader, "SWITCHBOARD_PUBLIC_TLS_KEY", optional=True) or self.key
        client_ca = _pem(reader, "SWITCHBOARD_PUBLIC_TLS_CLIENT_CA", optional=True)
        if cert is not self.cert or key is not self.key:
            _check_pair(reader, "SWITCHBOARD_PUBLIC_TLS_CERT", cert, key)
        if client_ca:
            _check_certificates(reader, "SWITCHBOARD_PUBLIC_TLS_CLIENT_CA", client_ca)
        return replace(
            self, cert=cert, key=key, client_ca=client_ca, require_client_cert=bool(client_ca)
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """None in plaintext mode."""
        if self.plaintext:
            return None
        client_ca = self.client_ca or self.ca
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=client_ca if self.require_client_cert else None,
            require_client_auth=self.require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """This service's client credentials for calling another; None in plaintext mode."""
        if self.plaintext:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def peer_service(self, auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
        """The service a peer's verified certificate names, if any."""
        uris = {uri.decode(errors="replace") for uri in auth_context.get("peer_uri", ())}
        for name, expected in self.service_ids.items():
            if expected in uris:
                return name
        return None


def _pem(reader: EnvReader, name: str, *, optional: bool = False) -> bytes:
    path = reader.str(name, "" if optional else None)
    if not path:
        return b""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        reader.problems.append(f"{name}: cannot read {path!r} ({error.strerror})")
        return b""
    if b"-----BEGIN" not in data:
        reader.problems.append(f"{name}: {path!r} is not a PEM file")
    return data


def _check_pair(reader: EnvReader, name: str, cert: bytes, key: bytes) -> None:
    """The certificate parses and the key is its own: gRPC's core would otherwise fail at the
    first handshake, or abort the process, instead of at start-up with a clear message."""
    if not cert or not key:
        return
    try:
        certificate = x509.load_pem_x509_certificate(cert)
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        reader.problems.append(f"{name}: certificate or key does not load ({error})")
        return
    mine = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        reader.problems.append(f"{name}: the key is not this certificate's key")


def _check_certificates(reader: EnvReader, name: str, pem: bytes) -> None:
    if not pem:
        return
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        reader.problems.append(f"{name}: not a PEM certificate bundle ({error})")


def _service_ids(reader: EnvReader) -> dict[str, str]:
    raw = reader.str("SWITCHBOARD_SERVICE_IDS", "")
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, uri = item.partition("=")
        if not sep or name not in SERVICES or "://" not in uri:
            reader.problems.append(
                "SWITCHBOARD_SERVICE_IDS: expected service=uri pairs separated by commas,"
                f" services among {', '.join(SERVICES)}; got {item!r}"
            )
            continue
        out[name] = uri
    return out


def call_metadata(tls: TlsConfig) -> tuple[tuple[str, str], ...]:
    """Metadata this service adds to its own calls: the service key in plaintext mode."""
    if tls.plaintext and tls.service_key:
        return (("authorization", f"Bearer {tls.service_key.reveal()}"),)
    return ()


def describe(tls: TlsConfig) -> dict[str, Any]:
    """For the start-up log line: the mode, never key material."""
    if tls.plaintext:
        return {"transport": "plaintext"}
    return {"transport": "tls", "client_certificates": tls.require_client_cert}
