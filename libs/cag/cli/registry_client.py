"""A small synchronous client of the registry service for the command line.

Synchronous on purpose: the CLI makes a handful of unary calls, and a blocking channel needs no
event loop (so it also works from a worker thread while another loop serves the registry).
Failed calls raise `grpc.RpcError`; `run_with_rpc_errors` turns them into one line and an exit code.
Every call presents the command's bearer token (cag.auth.credentials: CAG_TOKEN, or one minted from
the local signing key).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from types import TracebackType

import grpc

from cag.auth.credentials import bearer_metadata, resolve_token
from cag.errors import Status
from cag.metadata import ModuleMetadata
from cag.registry.convert import module_of
from cag.registry.core.records import ModuleRecord
from cag.registry.core.states import ModuleState
from cag.settings import CagSettings
from cag.v1 import common_pb2, registry_pb2, registry_pb2_grpc

DEFAULT_TIMEOUT_S = 30.0


def module_message(
    metadata: ModuleMetadata, source_uri: str, header_sha256: str, storage_uri: str
) -> common_pb2.Module:
    """The Register payload for a compiled module stored at `storage_uri` (registry-owned fields are left for the
    registry)."""
    record = ModuleRecord(
        metadata=metadata,
        source_uri=source_uri,
        storage_uri=storage_uri,
        header_sha256=header_sha256,
        state=ModuleState.VALIDATING,
    )
    return module_of(record)


def state_name(value: int) -> str:
    """MODULE_STATE_PUBLISHED → "published" (the registry's lower-case state names)."""
    return common_pb2.ModuleState.Name(value).removeprefix("MODULE_STATE_").lower()  # type: ignore[arg-type]


def state_value(name: str) -> common_pb2.ModuleState.ValueType:
    return common_pb2.ModuleState.Value(f"MODULE_STATE_{name.upper()}")


def golden_name(value: int) -> str:
    return common_pb2.GoldenStatus.Name(value).removeprefix("GOLDEN_STATUS_").lower()  # type: ignore[arg-type]


def acl_name(value: int) -> str:
    return common_pb2.AclScope.Name(value).removeprefix("ACL_SCOPE_").lower()  # type: ignore[arg-type]


class RegistryClient:
    """Blocking calls on one insecure channel to `address` (host:port); use as a context manager.

    `token`: the bearer token sent with every call (None: none, and the registry answers UNAUTHENTICATED).
    """

    def __init__(self, address: str, *, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = bearer_metadata(token) if token else ()
        self._channel = grpc.insecure_channel(address)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    @classmethod
    def from_settings(
        cls, settings: CagSettings, address: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> RegistryClient:
        """A client of `address` (default: settings.registry_address) with the command's credentials.

        Raises UnauthenticatedError, saying what to set, when the command has none.
        """
        return cls(address or settings.registry_address, token=resolve_token(settings), timeout_s=timeout_s)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def register(self, module: common_pb2.Module) -> common_pb2.Module:
        request = registry_pb2.RegisterRequest(module=module)
        return self._stub.Register(request, timeout=self.timeout_s, metadata=self._metadata).module

    def publish(self, module_id: str, *, expected_version: int = 0) -> common_pb2.Module:
        """Who published is this client's authenticated identity (the registry records its token's subject)."""
        request = registry_pb2.PublishRequest(module_id=module_id, expected_version=expected_version)
        return self._stub.Publish(request, timeout=self.timeout_s, metadata=self._metadata).module

    def get(self, module_id: str) -> common_pb2.Module:
        return self._stub.Get(
            registry_pb2.GetModuleRequest(module_id=module_id), timeout=self.timeout_s, metadata=self._metadata
        )

    def list_page(self, request: registry_pb2.ListModulesRequest) -> registry_pb2.ListModulesResponse:
        return self._stub.List(request, timeout=self.timeout_s, metadata=self._metadata)

    def list_all(self, request: registry_pb2.ListModulesRequest) -> Iterator[common_pb2.Module]:
        """Every page, following next_page_token from `request.page_token`."""
        page = registry_pb2.ListModulesRequest()
        page.CopyFrom(request)
        while True:
            response = self.list_page(page)
            yield from response.modules
            if not response.next_page_token:
                return
            page.page_token = response.next_page_token

    def resolve_route(self, tenant_id: str, route: str) -> registry_pb2.ResolveRouteResponse:
        request = registry_pb2.ResolveRouteRequest(tenant_id=tenant_id, route=route)
        return self._stub.ResolveRoute(request, timeout=self.timeout_s, metadata=self._metadata)

    def rollback(self, tenant_id: str, route: str, to_version: int, *, reason: str = "") -> common_pb2.Module:
        request = registry_pb2.RollbackRequest(tenant_id=tenant_id, route=route, to_version=to_version, reason=reason)
        return self._stub.Rollback(request, timeout=self.timeout_s, metadata=self._metadata).module

    def list_audit(self, request: registry_pb2.ListAuditRequest) -> registry_pb2.ListAuditResponse:
        """One page of the audit trail, newest first."""
        return self._stub.ListAudit(request, timeout=self.timeout_s, metadata=self._metadata)


def rpc_exit_code(code: grpc.StatusCode) -> int:
    """The CLI's exit code for a gRPC status: the domain mapping where the names agree, else 1."""
    from cag.cli.main import EXIT_CODES  # main imports the commands that import this module

    try:
        return EXIT_CODES.get(Status[code.name], 1)
    except KeyError:
        return 1


def report_rpc_error(error: grpc.RpcError) -> int:
    """Print `error (CODE): details` to stderr and return the exit code for CODE."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    print(f"error ({code.name}): {details}", file=sys.stderr)
    return rpc_exit_code(code)


def run_with_rpc_errors(command: Callable[[], int]) -> int:
    """Run a command that talks to the registry; a failed call becomes one line and its exit code."""
    try:
        return command()
    except grpc.RpcError as e:
        return report_rpc_error(e)
