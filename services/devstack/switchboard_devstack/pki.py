"""A development certificate authority and per-service certificates, for ``make run`` and tests.

``DevPki.ensure(directory)`` writes, once, under ``directory``:

- ``ca.pem`` / ``ca-key.pem``: a CA (ECDSA P-256) that signs everything below;
- ``router.pem``, ``catalog.pem``, ``metering.pem`` (+ ``-key.pem``): each service's certificate,
  valid as server and client, naming ``spiffe://switchboard.local/<service>`` (its service
  identity, see :mod:`switchboard_core.tls`) and the hosts it is reached at (localhost,
  127.0.0.1, ::1 and the service name, as on a compose network);
- ``operator.pem`` (+ ``-key.pem``): a client certificate without a service identity, for the
  CLI and operators' tools, which must also present an operator key.

Existing files are reused while valid for at least a day more. Private keys are written with
mode 0600. Built with the ``cryptography`` package; nothing shells out to openssl.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from switchboard_core.rpc_owners import SERVICES
from switchboard_core.tls import DEFAULT_TRUST_DOMAIN, TlsConfig, spiffe_id

OPERATOR = "operator"
CA_DAYS = 3650
LEAF_DAYS = 90
HOSTS = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class DevPki:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}-key.pem"

    def env(self, name: str) -> dict[str, str]:
        """The TLS variables of service (or client) ``name``."""
        return {
            "SWITCHBOARD_TLS_CERT": str(self.cert(name)),
            "SWITCHBOARD_TLS_KEY": str(self.key(name)),
            "SWITCHBOARD_TLS_CA": str(self.ca),
        }

    def read(self, name: str) -> tuple[bytes, bytes, bytes]:
        """(certificate, key, CA) of ``name``, as PEM bytes."""
        return self.cert(name).read_bytes(), self.key(name).read_bytes(), self.ca.read_bytes()

    def tls(self, name: str) -> TlsConfig:
        """Service ``name``'s TLS settings, as its environment would give them."""
        cert, key, ca = self.read(name)
        return TlsConfig(
            cert=cert,
            key=key,
            ca=ca,
            service_ids={service: spiffe_id(service) for service in SERVICES},
        )

    @classmethod
    def ensure(cls, directory: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> DevPki:
        pki = cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca_cert = pki._ensure_ca()
        for name in (*SERVICES, OPERATOR):
            if not pki._valid(pki.cert(name), ca_cert) or not pki.key(name).exists():
                pki._issue(name, ca_key, ca_cert, trust_domain)
        return pki

    def _valid(self, path: Path, issuer: x509.Certificate | None = None) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return False
        if issuer is not None:
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                return False
        return cert.not_valid_after_utc > _now() + datetime.timedelta(days=1)

    def _ensure_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path = self.directory / "ca-key.pem"
        if self._valid(self.ca) and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key, x509.load_pem_x509_certificate(self.ca.read_bytes())
        key = _private_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Switchboard development CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(key_path, key)
        _write_cert(self.ca, cert)
        # A new CA: every certificate signed by an old one is reissued.
        return key, cert

    def _issue(
        self,
        name: str,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        trust_domain: str,
    ) -> None:
        key = _private_key()
        now = _now()
        names: list[x509.GeneralName] = [x509.DNSName(host) for host in HOSTS]
        if name in SERVICES:
            names.append(x509.DNSName(name))
            names.append(x509.UniformResourceIdentifier(spiffe_id(name, trust_domain)))
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(self.key(name), key)
        _write_cert(self.cert(name), cert)


def main(argv: list[str] | None = None) -> int:
    """``python -m switchboard_devstack.pki DIR``: make (or keep) a development CA and the
    services' certificates in DIR, e.g. for docker compose. Not for production: use your
    cluster's issuer (cert-manager, SPIRE; see docs/SECURITY.md)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m switchboard_devstack.pki")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    args = parser.parse_args(argv)
    pki = DevPki.ensure(args.directory, args.trust_domain)
    for name in ("ca", *SERVICES, OPERATOR):
        path = pki.ca if name == "ca" else pki.cert(name)
        print(f"{name:9} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
