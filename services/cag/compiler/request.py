"""What a compile is asked to do, validated before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cag.acl import PUBLIC_TENANT, AclScope
from cag.errors import InvalidFieldError, InvalidInputError
from cag.identifiers import check_name
from cag.metadata import DTYPE_NAMES
from cag.settings import ENGINE_KINDS, default_engine


@dataclass(frozen=True, kw_only=True)
class AclSpec:
    """`public`, `tenant:<tenant>[:<route>]`, `workspace:<tenant>:<workspace>` or `user:<tenant>:<user>`."""

    scope: AclScope
    tenant_id: str
    principal: str  # the workspace or user id for those scopes, else ""
    route_hint: str

    @classmethod
    def parse(cls, text: str) -> AclSpec:
        parts = text.split(":")
        try:
            scope = AclScope(parts[0])
        except ValueError:
            raise InvalidInputError(f"--acl {text!r}: scope must be one of {[s.value for s in AclScope]}") from None
        if scope is AclScope.PUBLIC:
            if len(parts) > 1:
                raise InvalidInputError(f"--acl {text!r}: 'public' takes no qualifier")
            return cls(scope=scope, tenant_id=PUBLIC_TENANT, principal="", route_hint="")
        if len(parts) < 2 or not all(parts[1:]) or len(parts) > 3:
            raise InvalidInputError(f"--acl {text!r}: expected {scope.value}:<tenant>[:<qualifier>]")
        qualifier = parts[2] if len(parts) == 3 else ""
        if scope is not AclScope.TENANT and not qualifier:
            raise InvalidInputError(f"--acl {text!r}: {scope.value} scope needs {scope.value}:<tenant>:<id>")
        # The registry's own rules, applied here so a bad name fails before any model is loaded.
        tenant = check_name("--acl tenant", parts[1])
        if tenant == PUBLIC_TENANT:
            raise InvalidInputError(f"--acl {text!r}: tenant {PUBLIC_TENANT!r} is reserved; use --acl public")
        if scope is AclScope.TENANT:
            route = check_name("--acl route", qualifier) if qualifier else ""
            return cls(scope=scope, tenant_id=tenant, principal="", route_hint=route)
        return cls(
            scope=scope, tenant_id=tenant, principal=check_name(f"--acl {scope.value}", qualifier), route_hint=""
        )


@dataclass(frozen=True, kw_only=True)
class CompileRequest:
    model: str
    tokenizer: str | None
    source: Path
    layout: Path
    acl: AclSpec
    out: Path
    parents: tuple[Path, ...] = ()
    dtype: str = "fp32"
    route: str | None = None
    created_at: str | None = None
    ttl_days: int | None = None
    keep_failed: bool = False
    golden_max_new_tokens: int = 48
    # The engine that computes the rows: the one that will serve them (vLLM where installed).
    engine: str = field(default_factory=default_engine)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise InvalidInputError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
        if self.engine not in ENGINE_KINDS:
            raise InvalidInputError(f"--engine {self.engine!r}: choose one of {', '.join(ENGINE_KINDS)}")
        if self.ttl_days is not None and self.ttl_days < 1:
            raise InvalidInputError("--ttl-days must be at least 1")
        self._check_route()

    def _check_route(self) -> None:
        if self.route is not None:
            check_name("--route", self.route)
        elif not self.acl.route_hint:  # a hint was checked by AclSpec.parse
            try:
                check_name("route", self.route_name)
            except InvalidFieldError as e:
                raise InvalidInputError(
                    f"{e} (the route defaults to the source directory's name: pass --route)"
                ) from None

    @property
    def route_name(self) -> str:
        return self.route or self.acl.route_hint or self.source.resolve().name


def resolve_created_at(explicit: str | None, knowledge_date: str | None) -> str | None:
    """The module's date: explicit (the CLI maps SOURCE_DATE_EPOCH here), else the knowledge's newest `updated`
    date, else none. Never the clock: the same inputs must give the same bytes whenever they are compiled."""
    if explicit:
        return _iso(datetime.fromisoformat(explicit))
    if knowledge_date:
        return _iso(datetime.fromisoformat(knowledge_date))
    return None


def expires_at(created_at: str | None, ttl_days: int | None) -> str | None:
    """`ttl_days` after the module's date; a TTL needs a date the sources give (not the build clock)."""
    if ttl_days is None:
        return None
    if created_at is None:
        raise InvalidInputError(
            "--ttl-days needs the module's date: give --created-at (or SOURCE_DATE_EPOCH), or an `updated:` date"
            " in the source's front matter"
        )
    return _iso(datetime.fromisoformat(created_at) + timedelta(days=ttl_days))


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
