"""Server interceptor: request ids, RPC metrics, and domain errors to ``google.rpc.Status``."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from switchboard_core.errors import SwitchboardError
from switchboard_core.logs import request_id_var
from switchboard_core.metrics import GRPC_HANDLED, GRPC_SECONDS

log = logging.getLogger(__name__)

_INTERNAL_MESSAGE = "internal error; see the service log for this request id"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: SwitchboardError) -> None:
    status = error.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every unary and server-streaming handler."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method  # "/pkg.Service/Method"
        service, _, name = method[1:].rpartition("/")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, service, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, service, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def _wrap_unary(behavior: Any, service: str, name: str) -> Any:
    seconds = GRPC_SECONDS.labels(service, name)

    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request_id_var.set(_request_id(context))
        start = time.perf_counter()
        code = "OK"
        try:
            return await behavior(request, context)
        except SwitchboardError as error:
            code = error.code.name
            await _abort(context, error)
        except grpc.aio.AbortError:
            code = _code_of(context)
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("unhandled error", extra={"rpc": name})
            await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)
        finally:
            seconds.observe(time.perf_counter() - start)
            GRPC_HANDLED.labels(service, name, code).inc()

    return wrapper


def _wrap_stream(behavior: Any, service: str, name: str) -> Any:
    seconds = GRPC_SECONDS.labels(service, name)

    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        request_id_var.set(_request_id(context))
        start = time.perf_counter()
        code = "OK"
        try:
            async for item in behavior(request, context):
                yield item
        except SwitchboardError as error:
            code = error.code.name
            await _abort(context, error)
        except grpc.aio.AbortError:
            code = _code_of(context)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("unhandled error", extra={"rpc": name})
            await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)
        finally:
            seconds.observe(time.perf_counter() - start)
            GRPC_HANDLED.labels(service, name, code).inc()

    return wrapper
