"""Every RPC a server answers, counted by service, method and status code (cag_requests_total)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from cag.telemetry.metrics import REQUESTS

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Context = grpc.aio.ServicerContext[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime classes are not generic
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _Context = grpc.aio.ServicerContext
    _Handler = grpc.RpcMethodHandler

# The same table as cag.rpc.errors.HANDLER_FACTORIES: cag.rpc builds on this package, not the other way round.
_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _names(method: str) -> tuple[str, str]:
    """ "/cag.v1.RegistryService/Get" → ("cag.v1.RegistryService", "Get")."""
    service, _, name = method.strip("/").rpartition("/")
    return service, name


def _code(context: _Context, error: BaseException | None) -> str:
    """The status the call ended with: the one set on the context (an abort sets it), else what escaped the
    handler means to gRPC (cancellation: CANCELLED; anything else: UNKNOWN), else OK."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code.name
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


def _counted(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    service, name = _names(method)

    def count(context: _Context, error: BaseException | None) -> None:
        REQUESTS.labels(service=service, method=name, code=_code(context, error)).inc()

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                count(context, e)
                raise
            count(context, None)

        return stream

    async def unary(request: Any, context: _Context) -> Any:
        try:
            response = await behavior(request, context)
        except BaseException as e:
            count(context, e)
            raise
        count(context, None)
        return response

    return unary


class RequestCounter(_ServerInterceptor):
    """Counts each call of an async handler once, when it ends, with the status the caller receives (so it
    runs outside the interceptor that maps errors to statuses)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        if not (inspect.isasyncgenfunction(behavior) or inspect.iscoroutinefunction(behavior)):
            return handler  # every handler of a grpc.aio server here is async
        factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
        counted = _counted(behavior, handler_call_details.method)
        return factory(counted, handler.request_deserializer, handler.response_serializer)
