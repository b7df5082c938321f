"""Every domain error class declares a stable reason of its own, and every status maps to a gRPC code.

Classes are found the way a client would meet them: import every module of the `cag` packages (libs and
services), then walk CagError's subclasses. A class added anywhere without its own `reason` fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache
from pathlib import Path

import grpc
import pytest
import torch
from google.rpc import error_details_pb2

import cag
from cag.errors import CagError, KVTensorMismatchError, ModuleMismatchError, OverloadedError, Status
from cag.kvmodule import ModuleFile, write_module
from cag.kvmodule.metadata import torch_dtype
from cag.rpc.errors import ERROR_DOMAIN, INTERNAL_REASON, error_metadata, status_of

# google.rpc.ErrorInfo.reason: UPPER_SNAKE, at most 63 characters (AIP-193).
REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,61}[A-Z0-9]$")
# Entry points that run on import, and generated code (no errors there).
SKIPPED = re.compile(r"(^|\.)__main__$|^cag\.v1\.")


@cache
def platform_errors() -> tuple[type[CagError], ...]:
    for module in pkgutil.walk_packages(cag.__path__, "cag."):
        if not SKIPPED.search(module.name):
            importlib.import_module(module.name)
    found: list[type[CagError]] = []
    pending = [CagError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("cag."):  # classes tests define for themselves are theirs
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return tuple(sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def test_the_walk_finds_the_errors_of_libraries_and_services() -> None:
    names = {cls.__qualname__ for cls in platform_errors()}
    for expected in ("ModuleNotServableError", "KeyFileError", "InfraError", "RegistryNotFoundError"):
        assert expected in names


@pytest.mark.parametrize("cls", platform_errors(), ids=lambda c: c.__qualname__)
def test_every_error_class_declares_its_own_reason(cls: type[CagError]) -> None:
    declared = vars(cls).get("reason")
    assert isinstance(declared, str), f'{cls.__qualname__} must declare `reason = "..."` (inheriting one is not)'
    assert REASON.match(declared), f"{cls.__qualname__}.reason {declared!r} is not UPPER_SNAKE of <= 63 chars"
    assert isinstance(cls.status, Status)


def test_reasons_are_unique_and_none_is_internal() -> None:
    """One reason, one meaning: two classes sharing a reason would make clients unable to tell them apart."""
    by_reason: dict[str, list[str]] = {}
    for cls in platform_errors():
        by_reason.setdefault(cls.reason, []).append(cls.__qualname__)
    assert {reason: names for reason, names in by_reason.items() if len(names) > 1} == {}
    assert INTERNAL_REASON not in by_reason  # reserved for bugs


@pytest.mark.parametrize("cls", platform_errors(), ids=lambda c: c.__qualname__)
def test_the_reason_sent_is_the_declared_one_whatever_the_class_is_called(cls: type[CagError]) -> None:
    """Not derived from a name: a class renamed (here, a subclass called otherwise that declares nothing)
    sends exactly the reason declared, so renaming or moving a class changes nothing a client sees."""
    renamed = type("SomethingElseEntirelyError", (cls,), {})
    error = renamed.__new__(renamed)  # constructors differ; the mapping reads only the class and str(error)
    Exception.__init__(error, "why")
    info = error_details_pb2.ErrorInfo()
    assert status_of(error).details[0].Unpack(info)
    assert info.reason == vars(cls)["reason"]


# Clients branch on these: changing one is an API change, made here on purpose. (New classes need no entry
# here to pass, only a reason of their own; add them once clients may rely on them.)
PUBLISHED_REASONS = {
    "AlreadyRegisteredError": "ALREADY_REGISTERED",
    "CagError": "FAILED_PRECONDITION",
    "ChainError": "CHAIN_BROKEN",
    "ConcurrentPublishError": "CONCURRENT_PUBLISH",
    "ContextWindowExceededError": "CONTEXT_WINDOW_EXCEEDED",
    "EventBusUnavailableError": "EVENT_BUS_UNAVAILABLE",
    "FallbackUnavailableError": "FALLBACK_UNAVAILABLE",
    "OverloadedError": "OVERLOADED",
    "UnavailableError": "UNAVAILABLE",
    "GoldenTestsFailedError": "GOLDEN_TESTS_FAILED",
    "IllegalTransitionError": "ILLEGAL_TRANSITION",
    "InfraError": "INFRA_UNAVAILABLE",
    "InvalidFieldError": "INVALID_FIELD",
    "InvalidInputError": "INVALID_ARGUMENT",
    "KVCacheFullError": "KV_CACHE_FULL",
    "KVModuleNotFoundError": "MODULE_FILE_NOT_FOUND",
    "KVTensorMismatchError": "KV_TENSOR_MISMATCH",
    "KeyFileError": "SIGNING_KEY_UNUSABLE",
    "LayoutError": "INVALID_LAYOUT",
    "ModuleCorruptedError": "MODULE_CORRUPTED",
    "ModuleMismatchError": "MODULE_MISMATCH",
    "ModuleNotServableError": "MODULE_NOT_SERVABLE",
    "PermissionDeniedError": "PERMISSION_DENIED",
    "PublishRefusedError": "PUBLISH_REFUSED",
    "QueryError": "INVALID_QUERY",
    "RegistryNotFoundError": "REGISTRY_NOT_FOUND",
    "SourceError": "INVALID_SOURCE",
    "UnauthenticatedError": "UNAUTHENTICATED",
    "UnknownEngineError": "UNKNOWN_ENGINE",
    "UnknownLayoutError": "UNKNOWN_LAYOUT",
    "UnknownModelError": "UNKNOWN_MODEL",
}


def test_published_reasons_do_not_change_by_accident() -> None:
    declared = {cls.__qualname__: cls.reason for cls in platform_errors()}
    assert {name: declared.get(name) for name in PUBLISHED_REASONS} == PUBLISHED_REASONS


@pytest.mark.parametrize("status", list(Status))
def test_every_status_names_a_grpc_code(status: Status) -> None:
    assert grpc.StatusCode[status.name].name == status.value


@pytest.mark.parametrize("cls", platform_errors(), ids=lambda c: c.__qualname__)
def test_every_error_class_maps_to_a_status_with_its_reason(cls: type[CagError]) -> None:
    error = cls.__new__(cls)  # constructors differ; the mapping reads only the class and str(error)
    Exception.__init__(error, "why")
    status = status_of(error)
    assert status.code == grpc.StatusCode[cls.status.name].value[0]
    assert status.message == "why"
    assert status.details[0].TypeName() == "google.rpc.ErrorInfo"
    assert error_metadata(error) == {}


def test_status_details_name_the_domain_and_facts() -> None:
    status = status_of(ModuleMismatchError("dtype", "bf16", "fp32", module="m-1"))
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("MODULE_MISMATCH", ERROR_DOMAIN)
    assert dict(info.metadata) == {"field": "dtype", "expected": "bf16", "actual": "fp32", "module": "m-1"}


def test_an_overloaded_error_tells_the_client_when_to_retry() -> None:
    status = status_of(OverloadedError("12 requests waiting", retry_after_s=0.25))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    retry = error_details_pb2.RetryInfo()
    assert [d.Unpack(retry) for d in status.details] == [False, True]
    assert retry.retry_delay.ToNanoseconds() == 250_000_000


@pytest.mark.parametrize(
    ("k_shape", "v_shape", "tokens", "field"),
    [
        ((2, 3, 1, 4), (2, 2, 1, 4), 3, "v.shape"),  # K and V disagree
        ((2, 3, 1, 4), (2, 3, 1, 4), 4, "k.shape"),  # rows ≠ tokens
        ((3, 1, 4), (3, 1, 4), 3, "k.shape"),  # not [layers, tokens, kv_heads, head_dim]
    ],
)
def test_write_module_refuses_bad_tensors_with_a_typed_error(
    tiny_chain: tuple[Path, Path],
    tmp_path: Path,
    k_shape: tuple[int, ...],
    v_shape: tuple[int, ...],
    tokens: int,
    field: str,
) -> None:
    """Bad tensors are KVTensorMismatchError (FAILED_PRECONDITION, KV_TENSOR_MISMATCH), not ValueError/INTERNAL,
    and nothing is written."""
    metadata = ModuleFile.open(tiny_chain[0]).metadata
    k, v = torch.zeros(k_shape, dtype=torch_dtype(metadata)), torch.zeros(v_shape, dtype=torch_dtype(metadata))
    with pytest.raises(KVTensorMismatchError) as caught:
        write_module(tmp_path / "m.safetensors", metadata, k, v, list(range(tokens)))
    assert caught.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_write_module_refuses_tensors_in_another_dtype(tiny_chain: tuple[Path, Path], tmp_path: Path) -> None:
    metadata = ModuleFile.open(tiny_chain[0]).metadata
    other = torch.float16 if torch_dtype(metadata) != torch.float16 else torch.float32
    k = v = torch.zeros(2, 3, 1, 4, dtype=other)
    with pytest.raises(KVTensorMismatchError) as caught:
        write_module(tmp_path / "m.safetensors", metadata, k, v, [1, 2, 3])
    assert (caught.value.field, caught.value.expected) == ("k.dtype", str(torch_dtype(metadata)))
