"""Source roots (cag.source_roots): where each tenant's knowledge may come from, checked by the registry when a
module is recorded and by the compiler before it reads (a folder of another tenant, a look-alike tenant name, a
symbolic link out of the root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cag.auth import Caller, Scope
from cag.errors import InvalidFieldError
from cag.objectstore.sources import check_source_root
from cag.registry.core import RegistryCore
from cag.registry.core.memory import MemoryStore
from cag.registry.core.records import ModuleRecord
from cag.registry.core.states import ModuleState
from cag.registry.core.store import RegistryNotFoundError
from cag.settings import InfraSettings
from cag.source_roots import SourceRoots
from tests.registry_population import make_metadata

ROOTS = "file:///srv/kb/{tenant}/, s3://knowledge/{tenant}/,file:///srv/shared/"


def roots(text: str = ROOTS) -> SourceRoots:
    parsed = SourceRoots.parse(text)
    assert parsed is not None
    return parsed


def test_nothing_configured_is_no_restriction() -> None:
    assert SourceRoots.parse(None) is None and SourceRoots.parse(" , ") is None
    assert InfraSettings().roots is None


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/kb/acme/billing",
        "file:///srv/kb/acme/billing/",
        "file:///srv/kb/acme",  # the root itself
        "/srv/kb/acme/billing",  # a plain path is a file:// URI
        "file://localhost/srv/kb/acme/billing",
        "file:///srv/kb/%61cme/billing",  # what the reader decodes is what is checked
        "s3://knowledge/acme/billing/",
        "file:///srv/shared/glossary",  # a root without {tenant} is every tenant's
    ],
)
def test_a_tenants_sources_under_its_roots_pass(uri: str) -> None:
    roots().check(uri, "acme")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/kb/globex/payroll",  # another tenant's folder
        "file:///srv/kb/acme-evil/x",  # a name that merely starts like the tenant's
        "file:///srv/kb/acmex",
        "s3://knowledge/globex/",
        "s3://other-bucket/acme/",
        "file:///etc",
        "git://kb/acme/billing",  # nothing the roots can vouch for
        "file://evil.example/srv/kb/acme/",
    ],
)
def test_sources_elsewhere_are_refused_naming_the_tenants_roots(uri: str) -> None:
    with pytest.raises(InvalidFieldError, match="source_uri") as refused:
        roots().check(uri, "acme")
    assert "file:///srv/kb/acme/, s3://knowledge/acme/, file:///srv/shared/" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("file:///srv/kb/{tenant}", "ending with '/'"),
        ("relative/{tenant}/", "absolute path"),
        ("file:///srv/kb/../{tenant}/", "without '..'"),
        ("file:///srv/kb-{tenant}/", "whole folder name"),
        ("file:///srv/{tenant}/{tenant}/", "whole folder name"),
        ("https://kb.example/{tenant}/", "file:// or s3://"),
    ],
)
def test_a_malformed_root_is_refused_when_the_settings_are_built(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        InfraSettings(source_roots=text)


async def test_the_registry_records_no_source_outside_the_modules_tenants_roots() -> None:
    core = RegistryCore(MemoryStore(), roots())
    writer = Caller(subject="service:compiler", scopes=frozenset({Scope.WRITE}), tenants=frozenset({"acme"}))
    elsewhere = ModuleRecord(
        metadata=make_metadata("acme-billing", tenant_id="acme"),
        source_uri="file:///srv/kb/globex/payroll",
        state=ModuleState.VALIDATING,
    )
    with pytest.raises(InvalidFieldError, match="source_uri"):
        await core.register(writer, elsewhere)
    with pytest.raises(RegistryNotFoundError):  # nothing was written
        await core.store.get("acme-billing")
    own = ModuleRecord(
        metadata=make_metadata("acme-billing", tenant_id="acme"),
        source_uri="file:///srv/kb/acme/billing",
        state=ModuleState.VALIDATING,
    )
    assert (await core.register(writer, own)).source_uri == "file:///srv/kb/acme/billing"


def test_the_compiler_follows_the_folder_to_where_it_really_is(tmp_path: Path) -> None:
    """A link inside acme's root to globex's folder passes the URI check but not the real-path one."""
    (tmp_path / "acme").mkdir()
    (tmp_path / "globex" / "payroll").mkdir(parents=True)
    (tmp_path / "acme" / "payroll").symlink_to(tmp_path / "globex" / "payroll")
    (tmp_path / "acme" / "billing").mkdir()
    tenant_roots = roots(f"{tmp_path.as_uri()}/{{tenant}}/")
    check_source_root((tmp_path / "acme" / "billing").as_uri(), "acme", tenant_roots)
    with pytest.raises(InvalidFieldError, match="symbolic link"):
        check_source_root((tmp_path / "acme" / "payroll").as_uri(), "acme", tenant_roots)
    with pytest.raises(InvalidFieldError, match="not under a source root of tenant 'acme'"):
        check_source_root((tmp_path / "globex" / "payroll").as_uri(), "acme", tenant_roots)
