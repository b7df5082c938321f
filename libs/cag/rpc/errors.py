"""The one place domain errors become gRPC statuses (the mapping is documented in cag/v1/common.proto).

A `CagError` fails the call with the status its `status` names and its message, plus the standard rich
error model: a `google.rpc.Status` (same code and message) whose details hold a `google.rpc.ErrorInfo`
(the class's `reason`, domain ERROR_DOMAIN, metadata "field", "expected", "actual", "module", "state"
where the error has them) and, for INVALID_ARGUMENT naming a field, a `google.rpc.BadRequest`. It travels
as binary trailing metadata `grpc-status-details-bin`, which gRPC libraries of every language decode
(grpcio-status here). Anything else is a bug: the client gets INTERNAL with a generic message, reason
INTERNAL, and the traceback goes to the log.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]  # .pyi, no py.typed
from grpc_status import rpc_status

from cag.errors import CagError, Status

ERROR_DOMAIN = "cag.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # grpc_status's GRPC_DETAILS_METADATA_KEY
INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error; the server logged the details"
# Attributes some errors carry (ModuleMismatchError, ModuleNotServableError) that clients may want without
# parsing messages.
DETAIL_ATTRIBUTES = ("field", "expected", "actual", "module", "state")
# A message or metadata value that echoes a hostile request must not push the trailing metadata (which
# carries the message twice: grpc-message and the Status) past gRPC's 8 KiB soft limit, or the client gets
# RESOURCE_EXHAUSTED instead of the error. Services keep messages far shorter (the fuzzer holds them to 1 KiB).
MAX_MESSAGE_CHARS = 2048
MAX_DETAIL_CHARS = 256

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Context = grpc.aio.ServicerContext[Any, Any]
else:  # the runtime classes are not generic
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _Context = grpc.aio.ServicerContext


class ErrorDetails(NamedTuple):
    """What a failed call says about itself beyond code and message (its google.rpc.ErrorInfo)."""

    reason: str  # the error class's stable reason, for example "MODULE_NOT_SERVABLE"; "INTERNAL" for bugs
    field: str  # the offending request or module field; "" when none
    metadata: Mapping[str, str]  # every ErrorInfo metadata entry ("field", "expected", "actual", "module", ...)
    domain: str = ERROR_DOMAIN


def error_metadata(error: CagError) -> dict[str, str]:
    """The error's detail attributes that are set, as ErrorInfo metadata (values cut to MAX_DETAIL_CHARS)."""
    values = {name: getattr(error, name, None) for name in DETAIL_ATTRIBUTES}
    return {
        name: _bounded(value, MAX_DETAIL_CHARS) for name, value in values.items() if isinstance(value, str) and value
    }


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_of(error: CagError) -> status_pb2.Status:
    """The google.rpc.Status a call failed by `error` carries."""
    code = grpc.StatusCode[error.status.name]
    message, metadata = _bounded(str(error), MAX_MESSAGE_CHARS), error_metadata(error)
    status = _status(code, message, error.reason, metadata)
    if error.status is Status.INVALID_ARGUMENT and "field" in metadata:
        violation = error_details_pb2.BadRequest.FieldViolation(field=metadata["field"], description=message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    retry_after_s = getattr(error, "retry_after_s", None)
    if isinstance(retry_after_s, float | int) and retry_after_s > 0:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def _status(code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str]) -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.Code.Value(code.name), message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return status


def decode_error_details(trailing_metadata: Iterable[Any] | None) -> ErrorDetails | None:
    """The ErrorInfo of a failed call's `grpc-status-details-bin`, if it carries one.

    trailing_metadata: `error.trailing_metadata()` of a failed call, (key, value) pairs (aio or sync).
    """
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:  # not from a server of ours: no details rather than a crash in error handling
                return None
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    metadata = dict(info.metadata)
                    return ErrorDetails(info.reason, metadata.get("field", ""), metadata, info.domain)
    return None


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """The retry delay (google.rpc.RetryInfo) a failed call suggests, in seconds; None when it gives none."""
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return None
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


def error_details(error: grpc.RpcError) -> ErrorDetails | None:
    """(reason, field, metadata) of a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`); None when
    the status carries no ErrorInfo (gRPC's own statuses: UNAVAILABLE from a dead channel, DEADLINE_EXCEEDED)."""
    trailing = getattr(error, "trailing_metadata", None)
    return decode_error_details(trailing() if callable(trailing) else None)


async def abort_with(context: _Context, error: Exception, method: str) -> NoReturn:
    """Fail the call for `error` (never returns: `context.abort` raises)."""
    if isinstance(error, CagError):
        status = status_of(error)
    else:
        _log.error("unhandled error in %s", method, exc_info=error)
        status = _status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, INTERNAL_REASON, {})
    # The aio context's abort_with_status does just this; the grpc stubs lack it.
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, trailing_metadata=rich.trailing_metadata)


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
