"""Authentication of every RPC: the server interceptor, `current_caller()` for servicers, client helpers.

A call presents `authorization: Bearer <token>` metadata (cag.auth.tokens). The interceptor verifies
it before the handler runs and makes the Caller available to the handler through a context variable
(`current_caller()`); servicers pass it into their core, which decides what the caller may do.
Missing or bad credentials fail the call with UNAUTHENTICATED and an ErrorInfo, like any other error.
Only the health service is open, so that Kubernetes probes need no credentials.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc

from cag.auth.caller import Caller
from cag.auth.credentials import AUTHORIZATION, bearer_metadata
from cag.auth.tokens import KeySet, check_key, verify_token
from cag.errors import UnauthenticatedError
from cag.rpc.errors import HANDLER_FACTORIES, abort_with
from cag.rpc.reloading_channel import ReloadingChannel
from cag.rpc.tls import ClientTls
from cag.telemetry import aio_channel_interceptors

# Verifies a bearer token and names its caller, or raises UnauthenticatedError.
TokenVerifier = Callable[[str], Caller]
# What `build_server(auth=...)` takes: a signing key, a key set (the signing key and/or an outside issuer's
# JWKS), a verifier, or one caller that every call runs as without credentials (tests of other things only).
Auth = bytes | KeySet | TokenVerifier | Caller
# Names the caller of a call from its metadata, or raises UnauthenticatedError.
Authenticate = Callable[[Sequence[tuple[str, str | bytes]] | None], Caller]

OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})

_log = logging.getLogger(__name__)
_caller: ContextVar[Caller | None] = ContextVar("cag_caller", default=None)

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Context = grpc.aio.ServicerContext[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamInterceptor = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryInterceptor = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamInterceptor = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:  # the runtime classes are not generic
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _Context = grpc.aio.ServicerContext
    _Handler = grpc.RpcMethodHandler
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamInterceptor = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryInterceptor = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamInterceptor = grpc.aio.StreamStreamClientInterceptor


def current_caller() -> Caller:
    """The authenticated caller of the RPC being handled; UnauthenticatedError outside of one.

    Outside an authenticated call (a server built without `auth`) this fails closed: the client gets
    UNAUTHENTICATED rather than a call run as nobody in particular.
    """
    caller = _caller.get()
    if caller is None:
        raise UnauthenticatedError("this call carries no authenticated caller (the server runs without auth)")
    return caller


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The token of the one `authorization: Bearer <token>` entry; UnauthenticatedError otherwise."""
    values = [value for key, value in metadata or () if key == AUTHORIZATION]
    if not values:
        raise UnauthenticatedError(
            "no credentials: send 'authorization: Bearer <token>' metadata (CAG_TOKEN for `cag` commands; "
            "ops issue tokens with `cag auth token` for services, `cag token issue` for end users)"
        )
    if len(values) > 1:
        raise UnauthenticatedError("several authorization entries in the call metadata; send exactly one")
    scheme, _, token = values[0].partition(" ") if isinstance(values[0], str) else ("", "", "")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("the authorization metadata must read 'Bearer <token>'")
    return token.strip()


def key_verifier(keys: bytes | KeySet) -> TokenVerifier:
    """Verifies tokens signed with `keys`: the platform's signing key (HS256), or a KeySet that may add an
    outside issuer's JWKS (RS256, ES256) (cag.auth.tokens.verify_token)."""
    return partial(verify_token, keys if isinstance(keys, KeySet) else check_key(keys))


class AuthInterceptor(_ServerInterceptor):
    """Authenticates every call of every service except OPEN_SERVICES; see the module docstring.

    `anonymous`: the caller of calls that present no credentials; None (the default) refuses them.
    """

    def __init__(self, verify: TokenVerifier, *, anonymous: Caller | None = None) -> None:
        self._verify = verify
        self._anonymous = anonymous

    @classmethod
    def for_auth(cls, auth: Auth) -> AuthInterceptor:
        if isinstance(auth, bytes | KeySet):
            return cls(key_verifier(auth))
        if isinstance(auth, Caller):
            return cls(lambda _token: auth, anonymous=auth)
        return cls(auth)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or _service_of(method) in OPEN_SERVICES:  # unknown methods: UNIMPLEMENTED
            return handler
        return _authenticated_handler(handler, self._authenticate, method)

    def _authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller:
        if self._anonymous is not None and not any(key == AUTHORIZATION for key, _ in metadata or ()):
            return self._anonymous
        return self._verify(bearer_token(metadata))


def _service_of(method: str) -> str:
    """ "/grpc.health.v1.Health/Check" → "grpc.health.v1.Health"."""
    return method.strip("/").rpartition("/")[0]


async def _caller_or_abort(context: _Context, authenticate: Authenticate, method: str) -> Caller:
    try:
        # grpc.aio.Metadata iterates as (key, value) pairs; the stubs call it a plain Mapping.
        pairs: Any = context.invocation_metadata()
        return authenticate(tuple(pairs or ()))
    except UnauthenticatedError as e:
        # Debug, not warning: a client hammering bad tokens must not be able to flood the log.
        _log.debug("refused %s: %s", method, e)
        await abort_with(context, e, method)


def _authenticated_handler(handler: _Handler, authenticate: Authenticate, method: str) -> _Handler:
    """The handler with its behavior run as the authenticated caller (or refused before it runs)."""
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if inspect.isasyncgenfunction(behavior):
        wrapped: Callable[..., Any] = _stream_as_caller(behavior, authenticate, method)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = _call_as_caller(behavior, authenticate, method)
    else:
        wrapped = _refuse_sync(method)  # fail closed: a thread-pool handler would not see the context variable
    factory = HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(wrapped, handler.request_deserializer, handler.response_serializer)


def _call_as_caller(behavior: Callable[..., Awaitable[Any]], authenticate: Authenticate, method: str) -> Any:
    """Unary responses, and streaming handlers that answer through `context.write`."""

    async def as_caller(request: Any, context: _Context) -> Any:
        bound = _caller.set(await _caller_or_abort(context, authenticate, method))
        try:
            return await behavior(request, context)
        finally:
            _caller.reset(bound)

    return as_caller


def _stream_as_caller(behavior: Callable[..., AsyncIterator[Any]], authenticate: Authenticate, method: str) -> Any:
    """Streaming responses from an async generator."""

    async def as_caller(request: Any, context: _Context) -> AsyncIterator[Any]:
        # Not reset afterwards: grpc.aio runs each RPC in a task of its own, whose context ends with
        # it, and a generator may be finalized from another context (where reset would raise).
        _caller.set(await _caller_or_abort(context, authenticate, method))
        async for response in behavior(request, context):
            yield response

    return as_caller


def _refuse_sync(method: str) -> Callable[..., Awaitable[Any]]:
    async def refuse(request: Any, context: _Context) -> Any:
        await abort_with(context, TypeError(f"{method} has a synchronous handler; authentication needs async"), method)

    return refuse


# Client side -----------------------------------------------------------------------------------


def authenticated_channel(address: str, token: str, tls: ClientTls | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `address`, over TLS with `tls` (else plaintext), whose every call (unary or
    streaming) presents `token` and carries the current trace. TLS read from files follows them: a renewed
    certificate is presented from the next call on (cag.rpc.reloading_channel)."""
    if tls is not None and tls.files is not None:
        return ReloadingChannel(partial(_channel, address, token), tls)
    return _channel(address, token, tls)


def _channel(address: str, token: str, tls: ClientTls | None) -> grpc.aio.Channel:
    metadata = bearer_metadata(token)
    interceptors: list[Any] = [  # the stubs type client interceptors as "cast or ignore"
        *aio_channel_interceptors(),  # client spans; the trace goes on in the call's metadata
        _UnaryUnaryBearer(metadata),
        _UnaryStreamBearer(metadata),
        _StreamUnaryBearer(metadata),
        _StreamStreamBearer(metadata),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(address, interceptors=interceptors)
    return grpc.aio.secure_channel(address, tls.credentials(), options=tls.options(), interceptors=interceptors)


class _Bearer:
    """Adds the authorization entry to a call's metadata (grpc.aio sorts interceptors by their one
    kind, so each kind gets a class of its own)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _UnaryUnaryBearer(_Bearer, _UnaryUnaryInterceptor):
    pass


class _UnaryStreamBearer(_Bearer, _UnaryStreamInterceptor):
    pass


class _StreamUnaryBearer(_Bearer, _StreamUnaryInterceptor):
    pass


class _StreamStreamBearer(_Bearer, _StreamStreamInterceptor):
    pass
