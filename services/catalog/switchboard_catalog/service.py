"""The ``CatalogService`` gRPC servicer.

Handlers validate, call the store and raise ``switchboard_core.errors`` on bad input; the
shared interceptor turns those into ``google.rpc.Status``. ``WatchCatalog`` streams shared,
pre-serialized snapshots from the broadcaster, which is why this module registers the service
itself (:func:`add_to_server`) with a serializer that passes bytes through.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import Message

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard_catalog import importer_map, validate
from switchboard_catalog.importer import CatalogImporter
from switchboard_catalog.importer_source import SOURCES
from switchboard_catalog.store import CatalogStore
from switchboard_catalog.watch import CatalogBroadcaster
from switchboard_core import paging
from switchboard_core.errors import FailedPrecondition, InvalidArgument, NotFound
from switchboard_core.upstreams import UpstreamPolicy

SERVICE_NAME = "switchboard.catalog.v1.CatalogService"
MAX_IMPORT_PROVIDERS = 100

Context = grpc.aio.ServicerContext[Any, Any]


class CatalogService(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(
        self,
        store: CatalogStore,
        broadcaster: CatalogBroadcaster,
        upstream_policy: UpstreamPolicy,
        importer: CatalogImporter | None = None,
    ) -> None:
        self._store = store
        self._importer = importer
        self.broadcaster = broadcaster
        # Where provider base URLs may point (switchboard_core.upstreams).
        self._upstream_policy = upstream_policy

    async def ListModels(
        self, request: catalog_pb2.ListModelsRequest, context: Context
    ) -> catalog_pb2.ListModelsResponse:
        violations: validate.Violations = []
        size = 0
        try:
            size = paging.page_size(request.page_size)
        except InvalidArgument as error:
            violations.extend(error.violations)
        after = ""
        try:
            after = paging.decode_token(request.page_token)
        except InvalidArgument as error:
            violations.extend(error.violations)
        if request.provider_id:
            problem = validate.provider_id_problem(request.provider_id)
            if problem:
                violations.append(("provider_id", problem))
        if violations:
            raise InvalidArgument(violations)
        # One extra row tells whether another page follows.
        models = await self._store.list_models(
            after=after, limit=size + 1, provider_id=request.provider_id
        )
        page, more = models[:size], len(models) > size
        token = paging.encode_token(page[-1].id) if more and page else ""
        return catalog_pb2.ListModelsResponse(models=page, next_page_token=token)

    async def GetModel(
        self, request: catalog_pb2.GetModelRequest, context: Context
    ) -> catalog_pb2.GetModelResponse:
        problem = validate.model_id_problem(request.model_id)
        if problem:
            raise InvalidArgument({"model_id": problem})
        model = await self._store.get_model(request.model_id)
        if model is None:
            raise NotFound(
                f"model {request.model_id!r} not found",
                reason="MODEL_NOT_FOUND",
                metadata={"model_id": request.model_id},
            )
        return catalog_pb2.GetModelResponse(model=model)

    async def WatchCatalog(  # type: ignore[override]  # yields shared serialized snapshots
        self, request: catalog_pb2.WatchCatalogRequest, context: Context
    ) -> AsyncIterator[bytes]:
        if request.known_version < 0:
            raise InvalidArgument({"known_version": "must not be negative"})
        updates = self.broadcaster.watch(request.known_version)
        async with contextlib.aclosing(updates):
            async for snapshot in updates:
                yield snapshot.payload_for(include_price_history=request.include_price_history)

    async def ListProviders(
        self, request: catalog_pb2.ListProvidersRequest, context: Context
    ) -> catalog_pb2.ListProvidersResponse:
        return catalog_pb2.ListProvidersResponse(providers=await self._store.list_providers())

    async def UpsertProvider(
        self, request: catalog_pb2.UpsertProviderRequest, context: Context
    ) -> catalog_pb2.UpsertProviderResponse:
        if not request.HasField("provider"):
            raise InvalidArgument({"provider": "required"})
        violations = validate.provider_violations(
            request.provider, "provider", policy=self._upstream_policy
        )
        if violations:
            raise InvalidArgument(violations)
        stored = await self._store.upsert_provider(request.provider)
        return catalog_pb2.UpsertProviderResponse(provider=stored)

    async def UpsertModel(
        self, request: catalog_pb2.UpsertModelRequest, context: Context
    ) -> catalog_pb2.UpsertModelResponse:
        if not request.HasField("model"):
            raise InvalidArgument({"model": "required"})
        violations = validate.model_violations(request.model, "model")
        if violations:
            raise InvalidArgument(violations)
        stored = await self._store.upsert_model(request.model)
        return catalog_pb2.UpsertModelResponse(model=stored)

    async def UpsertEndpoint(
        self, request: catalog_pb2.UpsertEndpointRequest, context: Context
    ) -> catalog_pb2.UpsertEndpointResponse:
        if not request.HasField("endpoint"):
            raise InvalidArgument({"endpoint": "required"})
        violations = validate.endpoint_violations(
            request.endpoint, "endpoint", now=datetime.now(UTC)
        )
        if violations:
            raise InvalidArgument(violations)
        endpoint = validate.normalized_endpoint(request.endpoint)
        stored = await self._store.upsert_endpoint(endpoint)
        return catalog_pb2.UpsertEndpointResponse(endpoint=stored)

    async def ImportCatalog(
        self, request: catalog_pb2.ImportCatalogRequest, context: Context
    ) -> catalog_pb2.ImportCatalogResponse:
        violations: validate.Violations = []
        if request.source not in SOURCES:
            violations.append(("source", f"must be one of {sorted(SOURCES)}"))
        if len(request.provider_ids) > MAX_IMPORT_PROVIDERS:
            violations.append(("provider_ids", f"at most {MAX_IMPORT_PROVIDERS}"))
        else:
            for index, provider_id in enumerate(request.provider_ids):
                problem = validate.provider_id_problem(provider_id)
                if problem is None and provider_id not in importer_map.PROVIDERS_BY_CATALOG_ID:
                    known = ", ".join(sorted(importer_map.PROVIDERS_BY_CATALOG_ID))
                    problem = f"not a provider the import maps (one of: {known})"
                if problem:
                    violations.append((f"provider_ids[{index}]", problem))
        if violations:
            raise InvalidArgument(violations)
        if self._importer is None:
            raise FailedPrecondition("this catalog server imports nothing", reason="NO_IMPORTER")
        result = await self._importer.run(
            dry_run=request.dry_run, provider_ids=list(request.provider_ids)
        )
        return result.to_proto()


def _serialize_watch_response(message: bytes | catalog_pb2.WatchCatalogResponse) -> bytes:
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


def add_to_server(servicer: CatalogService, server: grpc.aio.Server) -> None:
    """Like the generated ``add_CatalogServiceServicer_to_server``, but ``WatchCatalog``
    sends the broadcaster's shared bytes instead of serializing once per watcher."""
    unary: list[tuple[str, Callable[..., Any], Callable[[bytes], Any]]] = [
        ("ListModels", servicer.ListModels, catalog_pb2.ListModelsRequest.FromString),
        ("GetModel", servicer.GetModel, catalog_pb2.GetModelRequest.FromString),
        ("ListProviders", servicer.ListProviders, catalog_pb2.ListProvidersRequest.FromString),
        ("UpsertProvider", servicer.UpsertProvider, catalog_pb2.UpsertProviderRequest.FromString),
        ("UpsertModel", servicer.UpsertModel, catalog_pb2.UpsertModelRequest.FromString),
        ("UpsertEndpoint", servicer.UpsertEndpoint, catalog_pb2.UpsertEndpointRequest.FromString),
        ("ImportCatalog", servicer.ImportCatalog, catalog_pb2.ImportCatalogRequest.FromString),
    ]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=parse, response_serializer=_serialize_message
        )
        for name, behavior, parse in unary
    }
    handlers["WatchCatalog"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchCatalog,
        request_deserializer=catalog_pb2.WatchCatalogRequest.FromString,
        response_serializer=_serialize_watch_response,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _serialize_message(message: Message) -> bytes:
    return message.SerializeToString()
