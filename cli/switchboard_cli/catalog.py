"""``switchboard catalog``: catalog maintenance (operator key with ``catalog:write``).

``catalog import [--dry-run] [--provider ID]...`` imports providers, models, endpoints and
prices from the price database bundled with the catalog server (``genai-prices``) and
prints one line per change, then a summary line; ``--dry-run`` changes nothing. Applying the
same data twice changes nothing the second time. ``catalog check`` is
:mod:`switchboard_cli.catalog_check`.
"""

from __future__ import annotations

import argparse
from collections import Counter

import grpc

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard_cli import catalog_check
from switchboard_cli.output import Output

SOURCE = "genai-prices"
# Importing reads and compares the whole catalog: more than the usual unary deadline.
IMPORT_TIMEOUT = 120.0

_KIND_WORDS = {
    catalog_pb2.CatalogChange.KIND_NEW_PROVIDER: "new provider",
    catalog_pb2.CatalogChange.KIND_NEW_MODEL: "new model",
    catalog_pb2.CatalogChange.KIND_NEW_ENDPOINT: "new endpoint",
    catalog_pb2.CatalogChange.KIND_PRICE_CHANGE: "price",
    catalog_pb2.CatalogChange.KIND_LIFECYCLE_CHANGE: "lifecycle",
    catalog_pb2.CatalogChange.KIND_REMOVED_FROM_SOURCE: "removed from source",
}


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    catalog = commands.add_parser("catalog", help="import prices, check the catalog (operator)")
    actions = catalog.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    importing = actions.add_parser(
        "import",
        parents=[common],
        help="import providers, models and prices from genai-prices",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    importing.add_argument(
        "--dry-run", action="store_true", help="report what would change; change nothing"
    )
    importing.add_argument(
        "--provider",
        action="append",
        default=[],
        metavar="ID",
        help="only this catalog provider id (repeatable; default: every mapped provider)",
    )
    importing.add_argument(
        "--skipped", action="store_true", help="also list the source entries left out, and why"
    )
    importing.set_defaults(handler=run_import, service="catalog")
    catalog_check.register(actions, common)


async def run_import(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    request = catalog_pb2.ImportCatalogRequest(
        source=SOURCE, dry_run=args.dry_run, provider_ids=args.provider
    )
    reply = await stub.ImportCatalog(request, timeout=IMPORT_TIMEOUT)
    if output.json:
        output.emit(reply)
        return 0
    for line in report_lines(reply, skipped=args.skipped):
        output.line(line)
    return 0


def report_lines(reply: catalog_pb2.ImportCatalogResponse, *, skipped: bool = False) -> list[str]:
    """One line per change (``price openai:openai/gpt-4o-mini: prompt 0.2 -> 0.15``), the
    skipped entries when asked, then the summary line."""
    lines = [
        f"{_KIND_WORDS.get(c.kind, 'change')} {c.id}" + (f": {c.detail}" if c.detail else "")
        for c in reply.changes
    ]
    if skipped:
        lines += [f"skipped {line}" for line in reply.skipped]
    counts = Counter(_KIND_WORDS.get(c.kind, "change") for c in reply.changes)
    tally = ", ".join(f"{n} {word}" for word, n in sorted(counts.items())) or "no changes"
    verb = "applied" if reply.applied else "dry run, nothing changed"
    version = f"catalog version {reply.catalog_version}"
    lines.append(
        f"{reply.source} {reply.source_version}: {tally}; {len(reply.skipped)} skipped"
        f" ({verb}; {version})"
    )
    return lines
