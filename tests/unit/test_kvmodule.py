"""The module file format: round trip, safetensors compatibility, checksums that fail closed, atomic writes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cag.engine import Engine
from cag.errors import KVModuleNotFoundError, ModuleCorruptedError
from cag.kvmodule import ModuleFile
from cag.kvmodule.atomic import atomic_writer


@pytest.fixture
def module_copy(tiny_chain: tuple[Path, Path], tmp_path: Path) -> Path:
    target = tmp_path / "copy.safetensors"
    shutil.copyfile(tiny_chain[0], target)  # the root: restorable on its own
    return target


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_round_trip_metadata_and_tensors_through_safetensors(tiny_chain: tuple[Path, Path]) -> None:
    module = ModuleFile.open(tiny_chain[1])
    module.verify()
    loaded = module.load()
    with safe_open(str(tiny_chain[1]), framework="pt") as f:
        header = f.metadata()
        assert header["module_id"] == module.metadata.module_id
        assert header["token_count"] == str(module.token_count)
        for layer in range(module.layers):
            assert torch.equal(f.get_tensor(f"k.{layer}"), loaded.k[layer])
            assert torch.equal(f.get_tensor(f"v.{layer}"), loaded.v[layer])
        assert f.get_tensor("token_ids").tolist() == module.token_ids()


def test_metadata_carries_every_seed_field(tiny_chain: tuple[Path, Path]) -> None:
    header = ModuleFile.open(tiny_chain[1]).metadata.to_header()
    seed_fields = {
        "module_id", "tenant_id", "route", "model_name", "model_revision", "tokenizer_revision",
        "context_checksum", "token_count", "dtype", "storage_uri", "acl_scope", "created_at", "expires_at",
    }  # fmt: skip
    ours = {"layout_id", "layout_hash", "layout", "parent_id", "chain_hash", "engine_fingerprint", "format_version"}
    assert seed_fields | ours | {"tensor_checksum", "golden_status", "golden_results"} <= header.keys()
    assert header["parent_id"] == ModuleFile.open(tiny_chain[0]).metadata.module_id


def test_file_size_is_within_one_percent_of_theoretical_kv_bytes(
    tiny_chain: tuple[Path, Path], tiny_engine: Engine
) -> None:
    module = ModuleFile.open(tiny_chain[1])
    theoretical = module.token_count * tiny_engine.kv_shape.bytes_per_token
    tensor_kv = module.data_bytes - 4 * module.token_count  # minus the int32 token ids
    assert tensor_kv == theoretical
    assert tiny_chain[1].stat().st_size <= theoretical * 1.01 + 64 * 1024  # the header is small and bounded


def test_header_bit_flip_is_refused_at_open(module_copy: Path) -> None:
    _flip_byte(module_copy, 200)  # inside the JSON header
    with pytest.raises(ModuleCorruptedError):
        ModuleFile.open(module_copy)


def test_tensor_bit_flip_is_refused_by_every_read_path(module_copy: Path, tiny_engine: Engine) -> None:
    module = ModuleFile.open(module_copy)
    _flip_byte(module_copy, module.data_offset + module.data_bytes // 2)
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        module.verify()
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        module.load()
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        tiny_engine.restore([module], reserve=8)


@pytest.mark.parametrize("keep", [4, 100, -1, -4096])
def test_truncated_file_is_refused(module_copy: Path, keep: int) -> None:
    size = module_copy.stat().st_size
    with module_copy.open("r+b") as f:
        f.truncate(keep if keep > 0 else size + keep)
    with pytest.raises(ModuleCorruptedError):
        ModuleFile.open(module_copy)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(KVModuleNotFoundError):
        ModuleFile.open(tmp_path / "nope.safetensors")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"x" * 1000)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    with atomic_writer(target) as f:
        f.write(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_writer(target) as f:
        f.write(b"new, but never finished")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_process_killed_mid_write_leaves_no_file(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from cag.kvmodule.atomic import atomic_writer\n"
        "with atomic_writer(Path(sys.argv[1]) / 'm.safetensors') as f:\n"
        "    f.write(b'x' * 1_000_000)\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.iterdir()) == []
