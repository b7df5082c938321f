"""The command line's side of talking to the registry: its client (cag.rpc.clients) built from the
command's settings and credentials, names for proto enums, and failed calls as one line and an exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import grpc

from cag.auth.credentials import resolve_token
from cag.errors import Status
from cag.rpc.clients import DEFAULT_TIMEOUT_S, RegistryClient
from cag.rpc.tls import client_tls
from cag.settings import CagSettings
from cag.v1 import common_pb2


def state_name(value: int) -> str:
    """MODULE_STATE_PUBLISHED → "published" (the registry's lower-case state names)."""
    return common_pb2.ModuleState.Name(value).removeprefix("MODULE_STATE_").lower()  # type: ignore[arg-type]


def state_value(name: str) -> common_pb2.ModuleState.ValueType:
    return common_pb2.ModuleState.Value(f"MODULE_STATE_{name.upper()}")


def golden_name(value: int) -> str:
    return common_pb2.GoldenStatus.Name(value).removeprefix("GOLDEN_STATUS_").lower()  # type: ignore[arg-type]


def acl_name(value: int) -> str:
    return common_pb2.AclScope.Name(value).removeprefix("ACL_SCOPE_").lower()  # type: ignore[arg-type]


def registry_client(
    settings: CagSettings, address: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> RegistryClient:
    """A client of `address` (default: settings.registry_address) with the command's credentials (CAG_TOKEN,
    or a short-lived token minted from the local signing key) and TLS settings (CAG_TLS_*); UnauthenticatedError
    saying what to set."""
    address = address or settings.registry_address
    return RegistryClient(address, token=resolve_token(settings), timeout_s=timeout_s, tls=client_tls(settings))


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
