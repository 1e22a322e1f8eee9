"""TLS settings from the environment: required unless plaintext is asked for, checked at start
(a key that is not the certificate's is a config error, not a crash at the first handshake),
and service identities read from certificate URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard_core.config import ConfigError, EnvReader
from switchboard_core.tls import TlsConfig, spiffe_id
from tests.secure import test_pki, tls_env


def read(env: dict[str, str]) -> TlsConfig:
    reader = EnvReader(env)
    config = TlsConfig.read(reader)
    reader.finish()
    return config


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read(env)
    return caught.value.problems


def test_certificates_are_required_unless_plaintext_is_asked_for() -> None:
    assert {p.split(":")[0] for p in problems({})} == {
        "SWITCHBOARD_TLS_CERT",
        "SWITCHBOARD_TLS_KEY",
        "SWITCHBOARD_TLS_CA",
    }
    plain = read({"SWITCHBOARD_INSECURE_PLAINTEXT": "true"})
    assert plain.plaintext
    assert plain.server_credentials() is None
    assert problems({"SWITCHBOARD_INSECURE_PLAINTEXT": "maybe"})[0].startswith(
        "SWITCHBOARD_INSECURE_PLAINTEXT"
    )


def test_a_service_reads_its_own_files() -> None:
    config = read(tls_env("metering"))
    assert not config.plaintext
    assert config.require_client_cert
    assert config.server_credentials() is not None
    assert config.channel_credentials() is not None
    assert "BEGIN" not in repr(config)  # no key material in logs


def test_unreadable_foreign_and_mismatched_files_are_reported(tmp_path: Path) -> None:
    env = tls_env("router")
    missing = problems({**env, "SWITCHBOARD_TLS_CA": str(tmp_path / "nope.pem")})
    assert missing[0].startswith("SWITCHBOARD_TLS_CA: cannot read")
    text = tmp_path / "text.pem"
    text.write_text("hello")
    assert "not a PEM file" in problems({**env, "SWITCHBOARD_TLS_CERT": str(text)})[0]
    other_key = str(test_pki().key("catalog"))
    mismatch = problems({**env, "SWITCHBOARD_TLS_KEY": other_key})
    assert mismatch == ["SWITCHBOARD_TLS_CERT: the key is not this certificate's key"]


def test_service_identity_comes_from_the_certificate_uri() -> None:
    config = read(tls_env("catalog"))
    router = {"peer_uri": [spiffe_id("router").encode()]}
    assert config.peer_service(router) == "router"
    assert config.peer_service({"peer_uri": [b"spiffe://elsewhere/router"]}) is None
    assert config.peer_service({"x509_common_name": [b"router"]}) is None  # CN is not enough


def test_spiffe_ids_can_be_given_explicitly() -> None:
    uri = "spiffe://cluster.local/ns/sb/sa/router"
    config = read({**tls_env("catalog"), "SWITCHBOARD_SERVICE_IDS": f"router={uri}"})
    assert config.peer_service({"peer_uri": [uri.encode()]}) == "router"
    assert config.peer_service({"peer_uri": [spiffe_id("router").encode()]}) is None
    bad = problems({**tls_env("catalog"), "SWITCHBOARD_SERVICE_IDS": "gateway=spiffe://x/y"})
    assert bad[0].startswith("SWITCHBOARD_SERVICE_IDS")


def test_the_public_port_asks_for_client_certificates_only_when_told() -> None:
    env = tls_env("router")
    reader = EnvReader(env)
    public = TlsConfig.read(reader).for_public_port(reader)
    assert not public.require_client_cert
    env_ca = {**env, "SWITCHBOARD_PUBLIC_TLS_CLIENT_CA": str(test_pki().ca)}
    reader = EnvReader(env_ca)
    assert TlsConfig.read(reader).for_public_port(reader).require_client_cert
    env_plain = {**env, "SWITCHBOARD_PUBLIC_INSECURE_PLAINTEXT": "true"}
    reader = EnvReader(env_plain)
    internal = TlsConfig.read(reader)
    assert internal.for_public_port(reader).plaintext
    assert not internal.plaintext  # the router still calls catalog and metering over mTLS


def test_the_service_key_is_a_secret() -> None:
    config = read({"SWITCHBOARD_INSECURE_PLAINTEXT": "1", "SWITCHBOARD_SERVICE_KEY": "sk-sb-op-x"})
    assert config.service_key.reveal() == "sk-sb-op-x"
    assert "sk-sb-op-x" not in repr(config)
