"""The compiler: reproducible output, golden gates, and every kind of bad input refused cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cag.compiler.pipeline import CompileResult, compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.engine import Engine
from cag.errors import (
    ContextWindowExceededError,
    GoldenTestsFailedError,
    InvalidInputError,
    LayoutError,
    ModuleCorruptedError,
    SourceError,
    UnknownLayoutError,
    UnknownModelError,
)
from cag.kvmodule import ModuleFile
from cag.metadata import GoldenStatus
from cag.models import TINY
from tests.conftest import KNOWLEDGE, LAYOUT, compile_example


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CompileTiny = Callable[..., CompileResult]


@pytest.fixture
def compile_tiny(tiny_engine: Engine, models_dir: Path, tmp_path: Path) -> CompileTiny:
    """Compile a source with the tiny model into tmp_path/out unless `out=` says otherwise."""

    def run(source: Path, out: Path | None = None, **kw: Any) -> CompileResult:
        return compile_example(
            source, out or tmp_path / "out", model=TINY, engine=tiny_engine, models_dir=models_dir, **kw
        )

    return run


def test_same_inputs_give_a_byte_identical_module(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    """Two output directories, and sources without any date: neither the location nor the clock gets in."""
    source = tmp_path / "undated"
    shutil.copytree(KNOWLEDGE / "shared", source)
    for document in source.glob("*.md"):
        document.write_text(
            "\n".join(line for line in document.read_text().splitlines() if not line.startswith("updated:"))
        )
    first = compile_tiny(source, out=tmp_path / "a")
    second = compile_tiny(source, out=tmp_path / "elsewhere" / "b")
    assert first.path is not None and second.path is not None
    assert first.path.name == second.path.name
    assert _sha(first.path) == _sha(second.path)
    header = ModuleFile.open(first.path).metadata.to_header()
    assert header["created_at"] == "" and "storage_uri" not in header
    assert b"elsewhere" not in second.path.read_bytes()


def test_a_ttl_needs_a_date_from_the_sources(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    source = tmp_path / "undated"
    shutil.copytree(KNOWLEDGE / "shared", source)
    for document in source.glob("*.md"):
        document.write_text(
            "\n".join(line for line in document.read_text().splitlines() if not line.startswith("updated:"))
        )
    with pytest.raises(InvalidInputError, match="--ttl-days needs the module's date"):
        compile_tiny(source, ttl_days=30)
    dated = compile_tiny(source, ttl_days=30, created_at="2026-03-01")
    assert (dated.metadata.created_at, dated.metadata.expires_at) == ("2026-03-01T00:00:00Z", "2026-03-31T00:00:00Z")


def test_changed_source_changes_identity(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(KNOWLEDGE / "shared", source)
    before = compile_tiny(source).metadata
    guidelines = source / "guidelines.md"
    guidelines.write_text(guidelines.read_text() + "\nAlways sign off politely.\n")
    after = compile_tiny(source).metadata
    assert before.context_checksum != after.context_checksum
    assert before.module_id != after.module_id


def test_golden_failure_writes_nothing_and_says_why(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    with pytest.raises(GoldenTestsFailedError, match="golden questions failed") as caught:
        compile_tiny(KNOWLEDGE / "billing", keep_failed=False)
    assert "expected" in str(caught.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_keep_failed_writes_an_unpublishable_module_with_results(compile_tiny: CompileTiny) -> None:
    result = compile_tiny(KNOWLEDGE / "billing", keep_failed=True)
    assert not result.publishable
    meta = ModuleFile.open(result.path).metadata
    assert meta.golden_status is GoldenStatus.FAILED
    recorded = json.loads(meta.golden_results)
    assert len(recorded) == len(json.loads((KNOWLEDGE / "billing" / "golden.json").read_text()))
    assert {"question", "expect", "answer", "passed"} <= recorded[0].keys()


def test_empty_source_is_refused(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty"):
        compile_tiny(tmp_path / "empty")


def test_missing_source_is_refused(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        compile_tiny(tmp_path / "absent")


def test_source_over_the_context_window_gives_counts_and_limit(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "manual.md").write_text("# Manual\n\n" + "The warranty covers parts and labour for two years. " * 900)
    with pytest.raises(ContextWindowExceededError, match=r"4,096") as caught:
        compile_tiny(big)
    assert "tokens" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_unknown_model_is_refused(tiny_engine: Engine, models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="no-such-model"):
        compile_example(
            KNOWLEDGE / "shared", tmp_path, model="no-such-model", engine=tiny_engine, models_dir=models_dir
        )


def test_unknown_layout_is_refused(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    with pytest.raises(UnknownLayoutError):
        compile_tiny(KNOWLEDGE / "shared", layout=tmp_path / "missing.json")


def test_invalid_layout_json_is_refused_with_position(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format_version": 1, "layout_id": "x",')
    with pytest.raises(LayoutError, match=r"bad.json:1:"):
        compile_tiny(KNOWLEDGE / "shared", layout=bad)


@pytest.mark.parametrize("acl", ["secret", "tenant", "workspace:acme", "public:acme", "user::bob"])
def test_malformed_acl_is_refused(compile_tiny: CompileTiny, acl: str) -> None:
    with pytest.raises(InvalidInputError, match="--acl"):
        compile_tiny(KNOWLEDGE / "shared", acl=acl)


def test_child_compiles_on_top_of_its_parent(tiny_chain: tuple[Path, Path]) -> None:
    root, child = (ModuleFile.open(p).metadata for p in tiny_chain)
    assert child.parent_id == root.module_id
    assert child.parent_chain_hash == root.chain_hash
    assert child.chain_hash != root.chain_hash
    assert child.layout_hash == root.layout_hash


def test_damaged_parent_is_refused_and_nothing_is_written(
    compile_tiny: CompileTiny, tiny_chain: tuple[Path, Path], tmp_path: Path
) -> None:
    parent = tmp_path / "parent.safetensors"
    shutil.copyfile(tiny_chain[0], parent)
    module = ModuleFile.open(parent)
    with parent.open("r+b") as f:
        f.seek(module.data_offset + 10)
        f.write(b"\xff\xfe")
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        compile_tiny(KNOWLEDGE / "billing", parents=(parent,))
    assert not (tmp_path / "out").exists()


def test_each_user_gets_their_own_module_and_file(compile_tiny: CompileTiny, tmp_path: Path) -> None:
    """Issue 6, defect 3: the principal is part of the identity; bob's compile must not replace alice's file."""
    out = tmp_path / "shared-out"
    alice = compile_tiny(KNOWLEDGE / "shared", out=out, acl="user:acme:alice")
    alice_bytes = _sha(alice.path)
    bob = compile_tiny(KNOWLEDGE / "shared", out=out, acl="user:acme:bob")
    assert alice.metadata.module_id != bob.metadata.module_id
    assert alice.metadata.context_checksum != bob.metadata.context_checksum
    assert alice.path != bob.path
    assert _sha(alice.path) == alice_bytes  # untouched by bob's compile
    assert ModuleFile.open(alice.path).metadata.acl_principal == "alice"
    assert ModuleFile.open(bob.path).metadata.acl_principal == "bob"
    workspace = compile_tiny(KNOWLEDGE / "shared", out=out, acl="workspace:acme:alice")
    other_tenant = compile_tiny(KNOWLEDGE / "shared", out=out, acl="user:globex:alice")
    ids = {r.metadata.module_id for r in (alice, bob, workspace, other_tenant)}
    assert len(ids) == 4
    assert len(list(out.glob("*.safetensors"))) == 4


def test_result_carries_the_written_header_checksum(compile_tiny: CompileTiny) -> None:
    result = compile_tiny(KNOWLEDGE / "shared")
    assert result.header_sha256 == ModuleFile.open(result.path).header_sha256


@pytest.mark.parametrize(
    ("acl", "route", "field"),
    [
        ("tenant:Acme Corp", None, "--acl tenant"),
        ("tenant:../../etc", None, "--acl tenant"),
        ("tenant:" + "a" * 300, None, "--acl tenant"),
        ("tenant:acme:../../etc", None, "--acl route"),
        ("user:acme:Bob Smith", None, "--acl user"),
        ("workspace:acme:../ops", None, "--acl workspace"),
        ("tenant:acme", "../../etc", "--route"),
        ("tenant:acme", "r" * 300, "--route"),
        ("tenant:public", None, "reserved"),
    ],
)
def test_names_are_checked_with_the_registry_rules_before_anything_loads(
    tmp_path: Path, acl: str, route: str | None, field: str
) -> None:
    """Refused while the request is built: no source, layout or model is touched (none of these exist)."""
    with pytest.raises(InvalidInputError, match=re.escape(field)) as caught:
        CompileRequest(model="absent", tokenizer=None, source=tmp_path / "src", layout=tmp_path / "l.json",
                       acl=AclSpec.parse(acl), out=tmp_path / "out", route=route)  # fmt: skip
    assert len(str(caught.value)) < 300  # a long name is not echoed back whole


def test_a_source_directory_name_that_is_no_route_asks_for_route(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="pass --route"):
        CompileRequest(model="m", tokenizer=None, source=tmp_path / "My Docs", layout=tmp_path / "l.json",
                       acl=AclSpec.parse("tenant:acme"), out=tmp_path / "out")  # fmt: skip


def _compile_to(out: Path, models_dir: Path) -> None:
    # No engine and a source that does not exist: only a check that runs first can answer.
    request = CompileRequest(model=TINY, tokenizer=None, source=KNOWLEDGE / "absent", layout=LAYOUT,
                             acl=AclSpec.parse("tenant:acme"), out=out, route="r")  # fmt: skip
    compile_module(request, models_dir=models_dir)


def test_out_that_is_a_file_is_refused_before_the_compile(tmp_path: Path, models_dir: Path) -> None:
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(InvalidInputError, match="is not a directory"):
        _compile_to(tmp_path / "taken", models_dir)
    with pytest.raises(InvalidInputError, match="is not a directory"):
        _compile_to(tmp_path / "taken" / "below", models_dir)


def test_out_on_a_read_only_file_system_is_refused_before_the_compile(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.statvfs
    read_only = os.statvfs_result((*real(tmp_path)[:8], real(tmp_path).f_flag | os.ST_RDONLY, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: read_only if Path(path) == tmp_path else real(path))
    with pytest.raises(InvalidInputError, match="read-only file system"):
        _compile_to(tmp_path / "new" / "out", models_dir)
    assert not (tmp_path / "new").exists()
