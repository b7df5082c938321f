"""The one domain error hierarchy of the platform.

Each error carries a `status` naming the gRPC status code it maps to, so the
gRPC interceptor (and the CLI's exit codes) translate errors in one place
without the core importing grpc.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
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

    status: Status = Status.FAILED_PRECONDITION


class InvalidInputError(CagError):
    status = Status.INVALID_ARGUMENT


class SourceError(InvalidInputError):
    """The knowledge source is missing, empty or malformed."""


class LayoutError(InvalidInputError):
    """A layout file is not valid JSON or violates the layout schema."""


class QueryError(InvalidInputError):
    """A query cannot be placed into the prompt layout."""


class ContextWindowExceededError(InvalidInputError):
    """The rendered prompt does not fit the model's context window."""


class UnknownModelError(CagError):
    status = Status.NOT_FOUND


class UnknownLayoutError(CagError):
    status = Status.NOT_FOUND


class KVModuleNotFoundError(CagError):
    status = Status.NOT_FOUND


class ModuleMismatchError(CagError):
    """A module was built for another model, tokenizer, layout, dtype or parent."""

    status = Status.FAILED_PRECONDITION

    def __init__(
        self, field: str, expected: str, actual: str, *, module: str = "", expected_by: str = "the engine expects"
    ) -> None:
        """`actual` is always the module's own value; `expected_by` names whoever holds `expected` and how
        ("the engine expects", "the registry record has"), so the message reads the right way round."""
        self.field = field
        self.expected = expected
        self.actual = actual
        where = f"module {module}: " if module else ""
        super().__init__(f"{where}{field} mismatch: the module has {actual!r}, {expected_by} {expected!r}")


class ModuleCorruptedError(CagError):
    """A module file failed checksum or structure verification; it is never served."""

    status = Status.DATA_LOSS


class GoldenTestsFailedError(CagError):
    status = Status.FAILED_PRECONDITION


class ChainError(CagError):
    """Modules given as a chain do not link up (a parent is missing or does not match)."""

    status = Status.FAILED_PRECONDITION


class KVCacheFullError(CagError):
    """The engine has no room left for the tokens a request needs (its KV memory is the limit)."""

    status = Status.RESOURCE_EXHAUSTED


class UnknownEngineError(CagError):
    """An engine kind no installed engine answers to."""

    status = Status.NOT_FOUND


class ModuleNotServableError(CagError):
    """A module of the requested chain is no longer published (stale, invalidated, expired, quarantined):
    the router answers from the fallback path instead."""

    status = Status.FAILED_PRECONDITION


class UnauthenticatedError(CagError):
    """The caller presented no credentials, or credentials that do not verify."""

    status = Status.UNAUTHENTICATED


class PermissionDeniedError(CagError):
    """The caller is who it says, but may not do this (another tenant's data, an admin operation)."""

    status = Status.PERMISSION_DENIED


class InvalidFieldError(InvalidInputError):
    """A request field is missing or malformed; `field` names it (the gRPC ErrorInfo carries it)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field} {problem}")
