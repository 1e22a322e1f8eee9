"""The argument parser: global options plus one sub-command per module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import NoReturn

from switchboard_cli import (
    __version__,
    account,
    audit,
    budgets,
    catalog,
    chat,
    generations,
    health,
    keys,
    models,
    rate_limits,
    usage,
)
from switchboard_cli.connection import DEFAULT_ADDRESSES

DESCRIPTION = "Switchboard: keys, models, chat, usage, budgets and rate limits over gRPC."
EPILOG = "Global options may also follow the sub-command, e.g. `switchboard models list --json`."


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are JSON on stderr when ``json_errors``."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if not self.json_errors:
            super().error(message)
        error = {"message": message, "code": "USAGE", "exit_code": 2, "usage": self.format_usage()}
        print(json.dumps({"error": error}), file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser(env: Mapping[str, str], *, json_errors: bool = False) -> argparse.ArgumentParser:
    """The parser; ``env`` supplies the defaults of --router, --catalog, --metering, --api-key.
    ``json_errors`` (``--json`` anywhere on the line): usage errors as JSON too."""
    parser_class: type[_Parser] = type("Parser", (_Parser,), {"json_errors": json_errors})
    parser = parser_class(prog="switchboard", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    _add_globals(parser, env, with_defaults=True)
    # Sub-commands accept the same options; SUPPRESS keeps them from resetting the globals.
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, env, with_defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        keys,
        account,
        models,
        catalog,
        chat,
        usage,
        generations,
        budgets,
        rate_limits,
        audit,
        health,
    ):
        module.register(commands, common)
    return parser


def _add_globals(
    parser: argparse.ArgumentParser, env: Mapping[str, str], *, with_defaults: bool
) -> None:
    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    for service, variable in [
        ("router", "SWITCHBOARD_ROUTER_ADDR"),
        ("catalog", "SWITCHBOARD_CATALOG_ADDR"),
        ("metering", "SWITCHBOARD_METERING_ADDR"),
    ]:
        fallback = DEFAULT_ADDRESSES[service]
        parser.add_argument(
            f"--{service}",
            metavar="HOST:PORT",
            default=default(env.get(variable) or fallback),
            help=f"{service} address (default: ${variable} or {fallback})",
        )
    parser.add_argument(
        "--api-key",
        default=default(env.get("SWITCHBOARD_API_KEY") or None),
        help="API key for chat (default: $SWITCHBOARD_API_KEY)",
    )
    parser.add_argument(
        "--admin-key",
        default=default(env.get("SWITCHBOARD_ADMIN_KEY") or ""),
        help="operator key for admin commands (default: $SWITCHBOARD_ADMIN_KEY)",
    )
    for option, variable, what in [
        ("--tls-ca", "SWITCHBOARD_TLS_CA", "CA certificate to trust"),
        ("--tls-cert", "SWITCHBOARD_TLS_CERT", "client certificate (catalog and metering)"),
        ("--tls-key", "SWITCHBOARD_TLS_KEY", "client certificate's key"),
    ]:
        parser.add_argument(
            option,
            metavar="PEM",
            default=default(env.get(variable) or ""),
            help=f"{what} (default: ${variable})",
        )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=default(env.get("SWITCHBOARD_INSECURE_PLAINTEXT", "").lower() in ("1", "true")),
        help="no TLS (only for servers configured with SWITCHBOARD_INSECURE_PLAINTEXT)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
