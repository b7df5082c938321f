"""The module file format: round trip, safetensors compatibility, checksums that fail closed, atomic writes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cag.engine import Engine
from cag.errors import ChainError, InvalidInputError, KVModuleNotFoundError, ModuleCorruptedError, ModuleMismatchError
from cag.kvmodule import ModuleFile, order_chain
from cag.kvmodule.atomic import atomic_writer
from cag.kvmodule.fileformat import HEADER_HASH_KEY, header_digest

Header = dict[str, Any]


def rewrite_header(path: Path, edit: Callable[[Header], object], *, sign: bool = True) -> None:
    """Edit a module's JSON header in place, keeping its data section; `sign` recomputes header_sha256.

    What an attacker with write access to the file can do: the result is self-consistent.
    """
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    if sign and isinstance(header.get("__metadata__"), dict):
        # Text no UTF-8 can hold (a lone surrogate) cannot be signed by anyone: it stays unsigned.
        with contextlib.suppress(UnicodeEncodeError):
            header["__metadata__"][HEADER_HASH_KEY] = header_digest(header)
    # ASCII escapes: the same bytes as canonical JSON for an ASCII header, and able to hold a lone surrogate.
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + size :])


def set_metadata(**fields: str) -> Callable[[Header], object]:
    return lambda header: header["__metadata__"].update(fields)


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
        "context_checksum", "token_count", "dtype", "acl_scope", "created_at", "expires_at",
    }  # fmt: skip
    # storage_uri is the seed's too, but where a file lives is a registry fact: it is not in the file's bytes.
    assert "storage_uri" not in header
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
        list(module.read_rows())
    tiny_engine.evict()  # the same module, verified, may be resident: then the engine would not read the file
    with pytest.raises(ModuleCorruptedError, match="checksum"):
        tiny_engine.prefill_module([module], [1])


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


def _set(key: str, field: str, value: object) -> Callable[[Header], object]:
    def edit(header: Header) -> None:
        if value is _DELETE:
            del header[key][field]
        else:
            header[key][field] = value

    return edit


_DELETE = object()


@pytest.mark.parametrize(
    "edit",
    [
        _set("k.0", "data_offsets", _DELETE),
        _set("k.0", "data_offsets", "0-10"),
        _set("k.0", "data_offsets", [0, 4, 8]),
        _set("k.0", "data_offsets", [0, "8"]),
        _set("k.0", "data_offsets", [True, 8]),
        _set("k.0", "data_offsets", [-8, 8]),
        _set("k.0", "data_offsets", [0, 4]),
        _set("k.0", "shape", _DELETE),
        _set("k.0", "shape", None),
        _set("k.0", "shape", []),
        _set("k.0", "shape", [1.5, 2]),
        _set("k.0", "dtype", _DELETE),
        _set("k.0", "dtype", "F64"),
        _set("token_ids", "dtype", "F32"),
        _set("__metadata__", "token_count", "many"),
        _set("__metadata__", "token_count", 3),
        _set("__metadata__", "acl_scope", "everyone"),
        _set("__metadata__", "dtype", _DELETE),
        _set("__metadata__", "route", "\udcff"),
        lambda header: header.update({"k.0": [1, 2]}),
        lambda header: header.update({"extra": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}),
    ],
    ids=[
        "offsets-missing", "offsets-text", "offsets-three", "offsets-string", "offsets-bool", "offsets-negative",
        "offsets-short", "shape-missing", "shape-null", "shape-0d", "shape-float", "dtype-missing", "dtype-f64",
        "token-ids-f32", "token-count-text", "token-count-number", "acl-unknown", "meta-field-missing",
        "lone-surrogate", "entry-not-object", "extra-tensor",
    ],
)  # fmt: skip
def test_any_malformed_header_is_refused_as_corrupted(module_copy: Path, edit: Callable[[Header], object]) -> None:
    """Signed, so the checksum passes: the structure checks must refuse it, never a KeyError or TypeError."""
    rewrite_header(module_copy, edit)
    with pytest.raises(ModuleCorruptedError):
        ModuleFile.open(module_copy)


@pytest.mark.parametrize(
    "header",
    [b"[1, 2]", b'{"__metadata__": "x"}', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}"],
    ids=["list", "metadata-text", "deep", "not-utf8"],
)
def test_header_that_is_not_a_json_object_is_refused(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModuleCorruptedError):
        ModuleFile.open(path)


def test_a_directory_or_a_fifo_is_not_a_module(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is a directory"):
        ModuleFile.open(tmp_path)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="is not a regular file, not a module file"):
        ModuleFile.open(fifo)  # returns at once: no writer is awaited


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_foreign_safetensors_file_is_not_a_cag_module(tmp_path: Path, metadata: dict[str, str] | None) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2, 3)}, str(path), metadata=metadata)
    with pytest.raises(InvalidInputError, match="not a CAG module"):
        ModuleFile.open(path)


def test_module_without_its_header_checksum_is_corrupted_not_foreign(module_copy: Path) -> None:
    rewrite_header(module_copy, lambda header: header["__metadata__"].pop(HEADER_HASH_KEY), sign=False)
    with pytest.raises(ModuleCorruptedError, match="header checksum"):
        ModuleFile.open(module_copy)


def test_check_record_accepts_the_published_file(module_copy: Path) -> None:
    module = ModuleFile.open(module_copy)
    assert len(module.header_sha256) == 64
    module.check_record(tensor_checksum=module.metadata.tensor_checksum, header_sha256=module.header_sha256)


def test_edited_and_re_signed_header_opens_but_differs_from_its_record(module_copy: Path) -> None:
    """Issue 6, defect 8: self-consistent is not enough; the registry record pins the published file."""
    published = ModuleFile.open(module_copy)
    rewrite_header(module_copy, set_metadata(tenant_id="globex", expires_at="2099-01-01T00:00:00Z"))
    tampered = ModuleFile.open(module_copy)  # verifies against itself
    assert tampered.metadata.tenant_id == "globex"
    with pytest.raises(ModuleMismatchError, match="header_sha256 mismatch: the module has") as caught:
        tampered.check_record(tensor_checksum=published.metadata.tensor_checksum, header_sha256=published.header_sha256)
    assert (caught.value.field, caught.value.expected) == ("header_sha256", published.header_sha256)
    assert "the registry record has" in str(caught.value)


def test_check_record_names_a_differing_tensor_checksum(module_copy: Path) -> None:
    module = ModuleFile.open(module_copy)
    with pytest.raises(ModuleMismatchError) as caught:
        module.check_record(tensor_checksum="blake3:" + "0" * 64, header_sha256=module.header_sha256)
    assert caught.value.field == "tensor_checksum"


def test_record_without_checksums_is_refused(module_copy: Path) -> None:
    with pytest.raises(ModuleMismatchError, match="header_sha256"):
        ModuleFile.open(module_copy).check_record(tensor_checksum="", header_sha256="")


def test_the_same_module_given_twice_is_named(tiny_chain: tuple[Path, Path]) -> None:
    root = ModuleFile.open(tiny_chain[0])
    with pytest.raises(ChainError, match=f"module {root.metadata.module_id} was given twice"):
        order_chain([root, ModuleFile.open(tiny_chain[1]), ModuleFile.open(tiny_chain[0])])


def test_layout_mismatch_says_which_side_has_which_hash(tiny_chain: tuple[Path, Path], tiny_engine: Engine) -> None:
    meta = ModuleFile.open(tiny_chain[0]).metadata
    with pytest.raises(ModuleMismatchError) as caught:
        tiny_engine.identity.check(meta, layout_hash="f" * 64, layout_of="the layout being compiled")
    assert f"the module has {meta.layout_hash!r}, the layout being compiled has {'f' * 64!r}" in str(caught.value)
    assert (caught.value.actual, caught.value.expected) == (meta.layout_hash, "f" * 64)


def test_engine_mismatch_puts_the_module_value_first(tiny_chain: tuple[Path, Path], tiny_engine: Engine) -> None:
    meta = ModuleFile.open(tiny_chain[0]).metadata
    other = dataclasses.replace(meta, dtype="bf16")
    with pytest.raises(ModuleMismatchError, match="dtype mismatch: the module has 'bf16', the engine expects 'fp32'"):
        tiny_engine.identity.check(other)
