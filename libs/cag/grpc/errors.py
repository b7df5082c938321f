"""The one place domain errors become gRPC statuses (the mapping is documented in cag/v1/common.proto).

A `CagError` fails the call with the status its `status` names, its message, and an `ErrorInfo`
under the binary trailing metadata key `cag-error-bin`. Anything else is a bug: the client gets
INTERNAL with a generic message and the traceback goes to the log.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from cag.errors import CagError
from cag.v1 import common_pb2

ERROR_INFO_KEY = "cag-error-bin"
INTERNAL_MESSAGE = "internal error; the server logged the details"
# Attributes some errors carry (ModuleMismatchError) that clients may want without parsing messages.
_DETAIL_ATTRIBUTES = ("expected", "actual", "module")
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Context = grpc.aio.ServicerContext[Any, Any]
else:  # the runtime classes are not generic
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _Context = grpc.aio.ServicerContext


def error_reason(error: CagError) -> str:
    """UPPER_SNAKE class name without "Error".

    ModuleMismatchError → MODULE_MISMATCH; KVModuleNotFoundError → KV_MODULE_NOT_FOUND.
    """
    return _WORD_BOUNDARY.sub("_", type(error).__name__.removesuffix("Error")).upper()


def error_info(error: CagError) -> common_pb2.ErrorInfo:
    field = getattr(error, "field", "")
    details = {name: getattr(error, name, None) for name in _DETAIL_ATTRIBUTES}
    return common_pb2.ErrorInfo(
        reason=error_reason(error),
        field=field if isinstance(field, str) else "",
        metadata={name: value for name, value in details.items() if isinstance(value, str) and value},
    )


def decode_error_info(trailing_metadata: Iterable[Any] | None) -> common_pb2.ErrorInfo | None:
    """The ErrorInfo a failed call carried, if any.

    trailing_metadata: `error.trailing_metadata()` of a failed call, (key, value) pairs (aio or sync).
    """
    for key, value in trailing_metadata or ():
        if key == ERROR_INFO_KEY and isinstance(value, bytes):
            return common_pb2.ErrorInfo.FromString(value)
    return None


async def abort_with(context: _Context, error: Exception, method: str) -> NoReturn:
    """Fail the call for `error` (never returns: `context.abort` raises)."""
    if isinstance(error, CagError):
        info = error_info(error)
        code, message = grpc.StatusCode[error.status.name], str(error)
    else:
        _log.error("unhandled error in %s", method, exc_info=error)
        info = common_pb2.ErrorInfo(reason="INTERNAL")
        code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
    await context.abort(code, message, trailing_metadata=((ERROR_INFO_KEY, info.SerializeToString()),))


def _guard_call(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    """Unary responses, and streaming handlers that answer through `context.write`."""

    async def guarded(request: Any, context: _Context) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise  # the handler aborted on purpose: its status stands
        except Exception as e:
            await abort_with(context, e, method)

    return guarded


def _guard_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    """Streaming responses from an async generator: an error mid-stream ends it with the mapped status."""

    async def guarded(request: Any, context: _Context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort_with(context, e, method)

    return guarded


HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def guard_handler(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with its behavior wrapped; synchronous behaviors are left as they are."""
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if inspect.isasyncgenfunction(behavior):
        guarded: Callable[..., Any] = _guard_stream(behavior, method)
    elif inspect.iscoroutinefunction(behavior):
        guarded = _guard_call(behavior, method)
    else:
        return handler
    factory = HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(guarded, handler.request_deserializer, handler.response_serializer)


class ErrorInterceptor(_ServerInterceptor):
    """Maps exceptions of every async handler (unary and streaming) to statuses; see the module docstring."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        return guard_handler(handler, handler_call_details.method)
