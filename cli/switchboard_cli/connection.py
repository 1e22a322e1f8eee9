"""Where the services are, how to reach them securely, and the metadata the router wants.

Every service serves TLS. The CLI trusts the CA in ``--tls-ca`` (``SWITCHBOARD_TLS_CA``; the
system's roots when unset) and, for the catalog and metering (whose ports ask for a client
certificate), presents ``--tls-cert``/``--tls-key`` (``SWITCHBOARD_TLS_CERT``/``_KEY``).
Admin commands send the operator key in ``--admin-key`` (``SWITCHBOARD_ADMIN_KEY``); ``chat``
sends the API key. ``make run`` writes all of these to ``.devstack/env``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from switchboard_core.channels import client_channel

DEFAULT_ADDRESSES = {
    "router": "127.0.0.1:50051",
    "catalog": "127.0.0.1:50052",
    "metering": "127.0.0.1:50053",
}

# Seconds to wait for a unary answer; streams have no deadline (a long answer is fine).
UNARY_TIMEOUT = 30.0
COMPLETION_TIMEOUT = 600.0


class ConnectionSetupError(Exception):
    """A certificate or key file named on the command line cannot be read."""


@dataclass(frozen=True, slots=True)
class Target:
    """One service the command talks to."""

    service: str
    address: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """How the CLI proves itself: TLS files (paths) and the operator key for admin calls."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    admin_key: str = field(default="", repr=False)
    plaintext: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Credentials:
        """The credentials the global options name (``--tls-ca``, ``--admin-key``...)."""
        return cls(
            ca=args.tls_ca,
            cert=args.tls_cert,
            key=args.tls_key,
            admin_key=args.admin_key,
            plaintext=args.plaintext,
        )


def _read(path: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConnectionSetupError(f"cannot read the {what} {path!r}: {error.strerror}") from None


@asynccontextmanager
async def open_channel(
    target: Target, credentials: Credentials | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to ``target``, closed on exit (connecting happens on the first call). The
    router gets no client certificate and no operator key (``chat`` sends the API key)."""
    creds = credentials or Credentials()
    internal = target.service != "router"
    if internal and bool(creds.cert) != bool(creds.key):
        raise ConnectionSetupError(
            "give a client certificate and its key together"
            " (--tls-cert/--tls-key, SWITCHBOARD_TLS_CERT/SWITCHBOARD_TLS_KEY)"
        )
    channel = client_channel(
        target.address,
        ca=_read(creds.ca, "CA certificate"),
        cert=_read(creds.cert, "client certificate") if internal else None,
        key=_read(creds.key, "client key") if internal else None,
        bearer=(creds.admin_key or None) if internal else None,
        plaintext=creds.plaintext,
    )
    async with channel:
        yield channel


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    """The router's authentication metadata."""
    return (("authorization", f"Bearer {api_key}"),)
