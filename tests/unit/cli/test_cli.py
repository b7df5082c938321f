"""The `cag` command line: compile, inspect, query, and clear errors with distinct exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cag.cli.main import main
from cag.kvmodule import ModuleFile
from cag.models import TINY
from tests.conftest import KNOWLEDGE, LAYOUT
from tests.unit.kvmodule.test_kvmodule import rewrite_header, set_metadata


@pytest.fixture
def shared_without_golden(tmp_path: Path) -> Path:
    """The shared demo source minus its golden questions (the tiny random model cannot answer them)."""
    source = tmp_path / "shared-src"
    shutil.copytree(KNOWLEDGE / "shared", source, ignore=shutil.ignore_patterns("golden.json"))
    return source


def _compile_args(source: Path, out: Path, *extra: str) -> list[str]:
    return ["compile", "--model", TINY, "--source", str(source), "--layout", str(LAYOUT), "--acl", "tenant:acme",
            "--out", str(out), *extra]  # fmt: skip


def test_compile_then_inspect_then_query(
    tmp_path: Path, shared_without_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_compile_args(shared_without_golden, out)) == 0
    [module] = out.glob("*.safetensors")
    capsys.readouterr()
    assert main(["inspect", str(module), "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["verified"] is True
    assert inspected["route"] == "shared-src"
    assert main(["query", "--module", str(module), "--query", "Which tool tracks a shipment?",
                 "--max-new-tokens", "8"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "TTFT" in captured.err


def test_golden_failure_exits_non_zero_and_prints_the_reason(
    tmp_path: Path, shared_without_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_compile_args(shared_without_golden, tmp_path / "p")) == 0
    [parent] = (tmp_path / "p").glob("*.safetensors")
    code = main(_compile_args(KNOWLEDGE / "billing", tmp_path / "c", "--parent", str(parent)))
    assert code == 4
    assert "golden questions failed" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_inspect_of_a_damaged_module_exits_with_data_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          tiny_chain: tuple[Path, Path]) -> None:  # fmt: skip
    damaged = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_chain[0], damaged)
    with damaged.open("r+b") as f:
        f.seek(-10, 2)
        f.write(b"\xff" * 4)
    assert main(["inspect", str(damaged)]) == 5
    assert "checksum" in capsys.readouterr().err


def test_query_of_a_child_without_parent_explains(
    tiny_chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "--module", str(tiny_chain[1]), "--query", "hi"]) == 4
    assert "must be given too" in capsys.readouterr().err


def test_query_with_reserved_token_text_is_invalid(
    tiny_chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["query", "--module", str(tiny_chain[0]), "--module", str(tiny_chain[1]), "--query", "hi<|im_end|>"]
    assert main(args) == 2
    assert "<|im_end|>" in capsys.readouterr().err


def test_interrupted_compile_leaves_no_partial_file(tmp_path: Path) -> None:
    """A compile stopped mid-prefill by SIGINT, or killed outright, leaves the output directory empty."""
    source = tmp_path / "big"
    source.mkdir()
    (source / "manual.md").write_text("# Manual\n\n" + "Returns need a receipt and the original box. " * 300)
    for sig in (signal.SIGINT, signal.SIGKILL):
        out = tmp_path / f"out-{sig.name}"
        proc = subprocess.Popen([sys.executable, "-m", "cag.cli.main", *_compile_args(source, out)],
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:  # freeze the compile as soon as prefill begins, then interrupt it there
            if "prefilling" in line:
                proc.send_signal(signal.SIGSTOP)
                break
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert not out.exists() or list(out.iterdir()) == []


def _one_line(err: str) -> str:
    """The error a command printed, asserting it is exactly one line and no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_inspect_of_a_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is a directory, not a module file" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("tensor", "field", "value"), [("k.0", "data_offsets", "x"), ("v.1", "shape", None), ("token_ids", "dtype", 7)]
)
def test_inspect_of_a_malformed_header_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_chain: tuple[Path, Path], tensor: str, field: str,
    value: object,
) -> None:  # fmt: skip
    module = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_chain[0], module)
    rewrite_header(
        module, lambda header: header[tensor].pop(field) if value is None else header[tensor].update({field: value})
    )
    assert main(["inspect", str(module)]) == 5
    assert "DATA_LOSS" in _one_line(capsys.readouterr().err)


def test_inspect_of_a_foreign_safetensors_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(4)}, str(weights), metadata={"format": "pt"})
    assert main(["inspect", str(weights)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not a CAG module" in line and "altered" not in line


def test_query_with_undecodable_bytes_is_one_line(
    tiny_chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # A shell's $'\xff' reaches Python as a lone surrogate (PEP 383).
    assert main(["query", "--module", str(tiny_chain[0]), "--query", "\udcff"]) == 2
    assert "--query is not valid UTF-8" in _one_line(capsys.readouterr().err)


def test_compile_to_an_out_that_is_a_file_fails_at_once(
    tmp_path: Path, shared_without_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(_compile_args(shared_without_golden, taken)) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in _one_line(err)
    assert "prefilling" not in err


def test_compile_refuses_a_malformed_tenant_in_one_line(
    tmp_path: Path, shared_without_golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _compile_args(shared_without_golden, tmp_path / "out")
    args[args.index("tenant:acme")] = "tenant:Acme Corp"
    assert main(args) == 2
    assert "--acl tenant 'Acme Corp' is malformed" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_query_of_the_same_module_twice_says_so(
    tiny_chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "--module", str(tiny_chain[0]), "--module", str(tiny_chain[0]), "--query", "hi"]) == 4
    assert "was given twice" in _one_line(capsys.readouterr().err)


def test_query_of_a_module_whose_layout_was_edited_names_both_hashes_rightly(
    tmp_path: Path, tiny_chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_chain[0], module)
    recorded = ModuleFile.open(module).metadata.layout_hash
    layout = json.loads(ModuleFile.open(module).metadata.layout)
    layout["max_query_tokens"] = layout["max_query_tokens"] + 1
    rewrite_header(module, set_metadata(layout=json.dumps(layout)))
    assert main(["query", "--module", str(module), "--query", "hi"]) == 4
    line = _one_line(capsys.readouterr().err)
    assert f"the module has {recorded!r}, its embedded layout hashes to" in line


def test_query_without_a_registry_warns_that_the_file_is_unverified(
    tmp_path: Path, tiny_chain: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 6, defect 8: a header edited and re-signed still answers without a registry, but is flagged."""
    module = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_chain[0], module)
    rewrite_header(module, set_metadata(tenant_id="globex", expires_at="2099-01-01T00:00:00Z"))
    assert main(["query", "--module", str(module), "--query", "hi", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    [warning] = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "not verified against a registry" in warning
