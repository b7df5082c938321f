"""Typed errors of the SDK, read from a failed call's status and its rich details (google.rpc.ErrorInfo and
RetryInfo in `grpc-status-details-bin`, see cag/v1/common.proto "Errors").

A product service branches on the class (one per gRPC code it can act on) or on `reason`, the platform's
stable UPPER_SNAKE constant ("MODULE_NOT_SERVABLE", "KV_CACHE_FULL", ...); gRPC's own failures (a dead
channel, a passed deadline) carry no ErrorInfo, and their reason is the code's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # .pyi, no py.typed

from cag.rpc.errors import STATUS_DETAILS_KEY, decode_error_details

FALLBACK_UNAVAILABLE = "FALLBACK_UNAVAILABLE"


class CagClientError(Exception):
    """A call failed: `code` (grpc.StatusCode), `reason`, the offending `field` ("" when none), ErrorInfo's
    `metadata`, and `retry_after_s` when the server said how long to wait (google.rpc.RetryInfo)."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str,
        field: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.field = field
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.message} ({self.code.name}, {self.reason})"


class UnauthenticatedError(CagClientError):
    """No token, or one that does not verify or has expired: get a new one."""


class PermissionDeniedError(CagClientError):
    """The token may not read this tenant (or module)."""


class InvalidArgumentError(CagClientError):
    """The request is malformed (`field` names what): an empty or oversized query, an unknown hint."""


class NotFoundError(CagClientError):
    """Something the request names does not exist (an unknown route)."""


class FailedPreconditionError(CagClientError):
    """The platform is not in a state to answer this (for example a module that is no longer servable)."""


class UnavailableError(CagClientError):
    """The router, or something behind it, cannot be reached now; worth retrying later."""


class FallbackUnavailableError(UnavailableError):
    """No module answers the query and the fallback path is not available: retrying will not help by itself."""


class ResourceExhaustedError(CagClientError):
    """The platform is busy (queue full, KV memory full): retry after `retry_after_s` when given."""


class DeadlineExceededError(CagClientError):
    """The call's deadline passed before the answer was complete."""


class DataLossError(CagClientError):
    """A module failed verification; the platform never answers from it."""


_CLASS_OF_CODE: dict[grpc.StatusCode, type[CagClientError]] = {
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
}


def client_error(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    field: str = "",
    metadata: Mapping[str, str] | None = None,
    retry_after_s: float | None = None,
) -> CagClientError:
    """The error of the class for `code` (and `reason`); reason defaults to the code's name."""
    reason = reason or code.name
    cls = _CLASS_OF_CODE.get(code, CagClientError)
    if cls is UnavailableError and reason == FALLBACK_UNAVAILABLE:
        cls = FallbackUnavailableError
    return cls(message, code=code, reason=reason, field=field, metadata=metadata, retry_after_s=retry_after_s)


def from_rpc_error(error: grpc.RpcError) -> CagClientError:
    """The typed error of a failed call (sync grpc.RpcError or grpc.aio.AioRpcError)."""
    code = _call_attribute(error, "code") or grpc.StatusCode.UNKNOWN
    message = _call_attribute(error, "details") or code.name
    trailing = _call_attribute(error, "trailing_metadata")
    details = decode_error_details(trailing)
    return client_error(
        code,
        message,
        reason=details.reason if details else "",
        field=details.field if details else "",
        metadata=details.metadata if details else None,
        retry_after_s=retry_delay_s(trailing),
    )


def retry_delay_s(trailing_metadata: Iterable[Any] | None) -> float | None:
    """google.rpc.RetryInfo's delay in a failed call's status details, in seconds; None without one."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return None
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
                    return float(delay) if delay >= 0 else None
    return None


def _call_attribute(error: grpc.RpcError, name: str) -> Any:
    # grpc.RpcError itself has none of these; the errors calls raise (sync and aio) have them all.
    method = getattr(error, name, None)
    return method() if callable(method) else None
