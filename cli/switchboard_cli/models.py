"""``switchboard models list|show``: the catalog's models, endpoints and prices.

With just an API key they ask the router's ``ListModels`` (the models that key can use, from
the router's copy of the catalog); with an operator key, the catalog itself (every model, and
disabled endpoints too).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation

import grpc

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from switchboard_cli.account import api_key_metadata, router_unless_operator
from switchboard_cli.connection import UNARY_TIMEOUT
from switchboard_cli.errors import CliError
from switchboard_cli.output import Output, enum_label, to_dict
from switchboard_cli.paging import PAGE_SIZE, collect


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    models = commands.add_parser("models", help="list models and their prices")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[common], help="every model, cheapest prices")
    listing.add_argument("--provider", default="", help="only models this provider serves")
    listing.set_defaults(handler=list_models, service=router_unless_operator("catalog"))

    show = actions.add_parser("show", parents=[common], help="one model's endpoints and prices")
    show.add_argument("model_id", metavar="MODEL_ID", help="e.g. openai/gpt-4o-mini")
    show.set_defaults(handler=show_model, service=router_unless_operator("catalog"))


def _pages(
    args: argparse.Namespace, channel: grpc.aio.Channel, provider: str = ""
) -> Callable[[str], Awaitable[tuple[Sequence[catalog_pb2.Model], str]]]:
    """One page of models at a time, from the router (API key) or the catalog (operator)."""
    if args.service == "router":
        router = router_pb2_grpc.RouterServiceStub(channel)
        metadata = api_key_metadata(args)

        async def from_router(token: str) -> tuple[Sequence[catalog_pb2.Model], str]:
            request = account_pb2.ListModelsRequest(
                page_size=PAGE_SIZE, page_token=token, provider_id=provider
            )
            reply = await router.ListModels(request, metadata=metadata, timeout=UNARY_TIMEOUT)
            return reply.models, reply.next_page_token

        return from_router
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)

    async def from_catalog(token: str) -> tuple[Sequence[catalog_pb2.Model], str]:
        request = catalog_pb2.ListModelsRequest(
            page_size=PAGE_SIZE, page_token=token, provider_id=provider
        )
        reply = await catalog.ListModels(request, timeout=UNARY_TIMEOUT)
        return reply.models, reply.next_page_token

    return from_catalog


async def list_models(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    models = await collect(_pages(args, channel, args.provider))
    if output.json:
        output.emit({"models": [to_dict(model) for model in models]})
        return 0
    if not models:
        output.note("no models" + (f" served by {args.provider}" if args.provider else ""))
        return 0
    rows = []
    for model in models:
        endpoints = _serving(model.endpoints)
        rows.append(
            [
                model.id,
                _count(model.context_length),
                cheapest(e.pricing.prompt_usd_per_mtok for e in endpoints),
                cheapest(e.pricing.completion_usd_per_mtok for e in endpoints),
                ",".join(sorted({e.provider_id for e in endpoints})) or "-",
            ]
        )
    headers = ["ID", "CONTEXT", "PROMPT $/MTOK", "COMPLETION $/MTOK", "PROVIDERS"]
    output.table(headers, rows, numeric={1, 2, 3})
    return 0


async def _one_model(args: argparse.Namespace, channel: grpc.aio.Channel) -> catalog_pb2.Model:
    if args.service != "router":
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        request = catalog_pb2.GetModelRequest(model_id=args.model_id)
        return (await stub.GetModel(request, timeout=UNARY_TIMEOUT)).model
    # The router lists what the key can use (hundreds of models at most): find it there.
    for model in await collect(_pages(args, channel)):
        if model.id == args.model_id:
            return model
    raise CliError(f"model {args.model_id!r} is not in the catalog, or this API key may not use it")


async def show_model(args: argparse.Namespace, channel: grpc.aio.Channel, output: Output) -> int:
    model = await _one_model(args, channel)
    if output.json:
        output.emit(model)
        return 0
    output.line(f"{model.id}  {model.display_name}".rstrip())
    inputs = ",".join(model.input_modalities) or "-"
    outputs = ",".join(model.output_modalities) or "-"
    output.line(f"context {_count(model.context_length)}  input {inputs}  output {outputs}")
    if model.description:
        output.line(model.description)
    output.line()
    if not model.endpoints:
        output.note("no endpoints serve this model")
        return 0
    headers = ["ENDPOINT", "PROVIDER", "CONTEXT", "MAX OUT", "PROMPT $/MTOK"]
    headers += ["COMPLETION $/MTOK", "CACHED $/MTOK", "QUANT", "STATUS"]
    output.table(headers, [_endpoint_row(e) for e in model.endpoints], numeric={2, 3, 4, 5, 6})
    return 0


def cheapest(prices: Iterable[str]) -> str:
    """The lowest price, printed exactly as the catalog sent it ("-" when there is none)."""
    best: tuple[Decimal, str] | None = None
    for text in prices:
        try:
            value = Decimal(text)
        except InvalidOperation:
            continue
        if value.is_finite() and (best is None or value < best[0]):
            best = (value, text)
    return "-" if best is None else best[1]


def _serving(endpoints: Sequence[catalog_pb2.Endpoint]) -> list[catalog_pb2.Endpoint]:
    """Endpoints that are not disabled."""
    return [e for e in endpoints if e.status != catalog_pb2.ENDPOINT_STATUS_DISABLED]


def _endpoint_row(endpoint: catalog_pb2.Endpoint) -> list[str]:
    pricing = endpoint.pricing
    status = catalog_pb2.EndpointStatus.Name(endpoint.status)
    return [
        endpoint.id,
        endpoint.provider_id,
        _count(endpoint.context_length),
        _count(endpoint.max_completion_tokens),
        pricing.prompt_usd_per_mtok or "-",
        pricing.completion_usd_per_mtok or "-",
        pricing.cached_prompt_usd_per_mtok or pricing.prompt_usd_per_mtok or "-",
        endpoint.quantization or "-",
        enum_label(status, "ENDPOINT_STATUS_"),
    ]


def _count(value: int) -> str:
    return str(value) if value else "-"
