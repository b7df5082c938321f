"""The one domain error hierarchy of the platform.

Each error class carries a `status` naming the gRPC status code it maps to and a `reason`: a stable
UPPER_SNAKE constant that clients branch on (sent as google.rpc.ErrorInfo.reason, cag/v1/common.proto).
Every class declares its own reason, written out here, never derived from the class name, so renaming
or moving a class changes nothing a client sees (tests/unit/test_errors.py holds every class to it).
A general class's reason is its status name (InvalidInputError → INVALID_ARGUMENT). The gRPC
interceptor and the CLI's exit codes translate errors in one place without the core importing grpc.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import ValidationError


class Status(StrEnum):
    """gRPC status codes a domain error may map to (each name is a grpc.StatusCode name)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    DATA_LOSS = "DATA_LOSS"
    UNAVAILABLE = "UNAVAILABLE"
    ABORTED = "ABORTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


class CagError(Exception):
    """Base of every error the platform raises on purpose."""

    status: ClassVar[Status] = Status.FAILED_PRECONDITION
    reason: ClassVar[str] = "FAILED_PRECONDITION"


class InvalidInputError(CagError):
    status = Status.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class SourceError(InvalidInputError):
    """The knowledge source is missing, empty or malformed."""

    reason = "INVALID_SOURCE"


class LayoutError(InvalidInputError):
    """A layout file is not valid JSON or violates the layout schema."""

    reason = "INVALID_LAYOUT"


class QueryError(InvalidInputError):
    """A query cannot be placed into the prompt layout."""

    reason = "INVALID_QUERY"


class ContextWindowExceededError(InvalidInputError):
    """The rendered prompt does not fit the model's context window."""

    reason = "CONTEXT_WINDOW_EXCEEDED"


class UnknownModelError(CagError):
    status = Status.NOT_FOUND
    reason = "UNKNOWN_MODEL"


class UnknownLayoutError(CagError):
    status = Status.NOT_FOUND
    reason = "UNKNOWN_LAYOUT"


class KVModuleNotFoundError(CagError):
    """A module file is not where it was looked for (a registry record that is missing is REGISTRY_NOT_FOUND)."""

    status = Status.NOT_FOUND
    reason = "MODULE_FILE_NOT_FOUND"


class ModuleMismatchError(CagError):
    """A module was built for another model, tokenizer, layout, dtype or parent."""

    status = Status.FAILED_PRECONDITION
    reason = "MODULE_MISMATCH"

    def __init__(
        self, field: str, expected: str, actual: str, *, module: str = "", expected_by: str = "the engine expects"
    ) -> None:
        """`actual` is always the module's own value; `expected_by` names whoever holds `expected` and how
        ("the engine expects", "the registry record has"), so the message reads the right way round."""
        self.field = field
        self.expected = expected
        self.actual = actual
        self.module = module
        where = f"module {module}: " if module else ""
        super().__init__(f"{where}{field} mismatch: the module has {actual!r}, {expected_by} {expected!r}")


class ModuleCorruptedError(CagError):
    """A module file failed checksum or structure verification; it is never served."""

    status = Status.DATA_LOSS
    reason = "MODULE_CORRUPTED"


class KVTensorMismatchError(CagError):
    """KV tensors do not have the shape, dtype or token count they must (K and V disagree, rows ≠ tokens):
    a bug in whoever produced them, refused before a byte is written or attended over."""

    status = Status.FAILED_PRECONDITION
    reason = "KV_TENSOR_MISMATCH"

    def __init__(self, field: str, expected: str, actual: str) -> None:
        """field: which tensor or property ("v.shape", "k.dtype"); expected/actual: as text."""
        self.field = field
        self.expected = expected
        self.actual = actual
        super().__init__(f"KV tensors: {field} is {actual}, expected {expected}")


class GoldenTestsFailedError(CagError):
    status = Status.FAILED_PRECONDITION
    reason = "GOLDEN_TESTS_FAILED"


class ChainError(CagError):
    """Modules given as a chain do not link up (a parent is missing or does not match)."""

    status = Status.FAILED_PRECONDITION
    reason = "CHAIN_BROKEN"


class KVCacheFullError(CagError):
    """The engine has no room left for the tokens a request needs (its KV memory is the limit)."""

    status = Status.RESOURCE_EXHAUSTED
    reason = "KV_CACHE_FULL"


class UnsupportedKVLayoutError(CagError):
    """The engine's attention backend stores KV in a page layout modules cannot be restored into."""

    status = Status.FAILED_PRECONDITION
    reason = "UNSUPPORTED_KV_LAYOUT"


class UnknownJobError(CagError):
    """A compile job id the compiler does not know (or the caller may not read)."""

    status = Status.NOT_FOUND
    reason = "UNKNOWN_JOB"


class UnknownEngineError(CagError):
    """An engine kind no installed engine answers to."""

    status = Status.NOT_FOUND
    reason = "UNKNOWN_ENGINE"


class ModuleNotServableError(CagError):
    """A module of the requested chain is no longer published (stale, invalidated, expired, quarantined):
    the router answers from the fallback path instead."""

    status = Status.FAILED_PRECONDITION
    reason = "MODULE_NOT_SERVABLE"

    def __init__(self, message: str, *, module: str = "", state: str = "") -> None:
        """module: the id of the first unservable module of the chain; state: its state ("stale")."""
        self.module = module
        self.state = state
        super().__init__(message)


class UnavailableError(CagError):
    """A service the request needs cannot answer now (not started, not caught up, down): try again later."""

    status = Status.UNAVAILABLE
    reason = "UNAVAILABLE"


class FallbackUnavailableError(UnavailableError):
    """No module serves the question (no route matched, or its module is not servable) and there is no
    fallback retrieval to answer it instead."""

    reason = "FALLBACK_UNAVAILABLE"


class EmbeddingUnavailableError(UnavailableError):
    """The fallback's embedding model failed to embed the query or the documents: nothing can be retrieved."""

    reason = "EMBEDDING_UNAVAILABLE"


class NoEvidenceError(CagError):
    """The fallback index holds no chunk the caller may read (no source indexed for its tenant, none public):
    index the tenant's sources first."""

    status = Status.FAILED_PRECONDITION
    reason = "NO_EVIDENCE"


class OverloadedError(CagError):
    """Too many requests are waiting: try again after `retry_after_s` (sent as a google.rpc.RetryInfo)."""

    status = Status.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class UnauthenticatedError(CagError):
    """The caller presented no credentials, or credentials that do not verify."""

    status = Status.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(CagError):
    """The caller is who it says, but may not do this (another tenant's data, an admin operation)."""

    status = Status.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class InvalidFieldError(InvalidInputError):
    """A request field is missing or malformed; `field` names it (the gRPC ErrorInfo carries it)."""

    reason = "INVALID_FIELD"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field} {problem}")


def validation_problems(error: ValidationError, *, root: str = "body") -> str:
    """A pydantic validation error on one line (a log line, a header, a CLI message): `field: problem; …`.

    The offending input is never quoted (it may be huge, or a secret such as a database URL); `root` names
    what a problem without a field location is about.
    """
    parts = []
    for e in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in e["loc"]) or root
        parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
