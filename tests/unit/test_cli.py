"""The `cag` command line: compile, inspect, query, and clear errors with distinct exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cag.cli.main import main
from cag.models import TINY
from tests.conftest import KNOWLEDGE, LAYOUT


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
