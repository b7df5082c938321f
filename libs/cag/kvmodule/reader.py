"""Opening, verifying and restoring KV module files. Every path fails closed.

`ModuleFile.open` verifies the header checksum and the structure; tensor bytes are
verified by `verify()` (mmap), by `load()` before a host-RAM copy is handed out, and
by `read_rows()` while it streams a module from disk into buffers its caller chose.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, TypeGuard

import torch

from cag.errors import (
    CagError,
    InvalidInputError,
    KVModuleNotFoundError,
    KVTensorMismatchError,
    ModuleCorruptedError,
    ModuleMismatchError,
)
from cag.identifiers import echo
from cag.kvmodule import checksum
from cag.kvmodule.chain import LayerRows, RowsTarget
from cag.kvmodule.fileformat import HEADER_HASH_KEY, TensorEntry, header_digest, layer_tensor_names, tensor_bytes
from cag.kvmodule.metadata import SAFETENSORS_DTYPES, torch_dtype
from cag.metadata import ModuleMetadata

_MAX_HEADER = 64 << 20
_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4}


def _read_header(path: Path) -> tuple[bytes, int]:
    """The raw JSON header and the file's size; only a regular, readable file gets this far."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer that never comes.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise KVModuleNotFoundError(f"module file {path} does not exist") from e
    except OSError as e:
        raise CagError(f"cannot open module file {path}: {e.strerror}") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise InvalidInputError(f"{path} is {kind}, not a module file")
    try:
        with os.fdopen(fd, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModuleCorruptedError(f"{path}: file is truncated ({len(prefix)} bytes)")
            (size,) = struct.unpack("<Q", prefix)
            if size > min(_MAX_HEADER, info.st_size - 8):
                raise ModuleCorruptedError(
                    f"{path}: header length {size:,} is implausible for a {info.st_size:,}-byte file"
                    " (truncated, or not a safetensors file)"
                )
            return f.read(size), info.st_size
    except OSError as e:
        raise CagError(f"cannot read module file {path}: {e.strerror}") from e


def _parse_header(raw: bytes, path: Path) -> dict[str, object]:
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError covers JSON and UTF-8 errors
        raise ModuleCorruptedError(f"{path}: header is not valid JSON ({str(e)[:200]})") from e
    if not isinstance(header, dict):
        raise ModuleCorruptedError(f"{path}: header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise ModuleCorruptedError(f"{path}: header metadata is not a JSON object")
    if HEADER_HASH_KEY not in meta and "format_version" not in meta:
        # Any other safetensors file (model weights, say): not damaged, just not ours.
        raise InvalidInputError(f"{path} is not a CAG module: its safetensors header has no CAG module metadata")
    if not all(isinstance(v, str) for v in meta.values()):
        raise ModuleCorruptedError(f"{path}: header metadata values are not all strings")
    return header


def _verified_signature(header: dict[str, object], path: Path) -> str:
    """The header's own header_sha256, once it is shown to match the header's contents."""
    meta = header["__metadata__"]
    assert isinstance(meta, dict)  # checked by _parse_header
    try:
        digest = header_digest(header)
    except UnicodeEncodeError as e:  # JSON escapes can decode to lone surrogates, which UTF-8 cannot hold
        raise ModuleCorruptedError(f"{path}: header holds text that is not valid UTF-8") from e
    signature = meta.get(HEADER_HASH_KEY)
    if signature != digest:
        raise ModuleCorruptedError(f"{path}: header checksum does not verify (metadata altered or damaged)")
    return digest


@dataclass(frozen=True)
class ModuleFile:
    """A module file whose header verified; tensors are read on demand."""

    path: Path
    metadata: ModuleMetadata
    entries: tuple[TensorEntry, ...]  # in data order
    data_offset: int
    header_sha256: str  # the header's checksum, which the registry record of the module also holds

    @classmethod
    def open(cls, path: Path) -> ModuleFile:
        """Open and verify the header; any malformed file raises a CagError, never anything else."""
        raw, file_size = _read_header(path)
        header = _parse_header(raw, path)
        signature = _verified_signature(header, path)
        meta = header["__metadata__"]
        assert isinstance(meta, dict)
        try:
            metadata = ModuleMetadata.from_header({k: v for k, v in meta.items() if k != HEADER_HASH_KEY})
        except ModuleCorruptedError as e:
            raise ModuleCorruptedError(f"{path}: {e}") from e
        entries = _entries(header, path)
        data_offset = 8 + len(raw)
        expected_size = data_offset + (entries[-1].stop if entries else 0)
        if file_size != expected_size:
            raise ModuleCorruptedError(f"{path}: file is {file_size} bytes, header describes {expected_size}")
        module = cls(path=path, metadata=metadata, entries=entries, data_offset=data_offset, header_sha256=signature)
        module._check_shapes()
        return module

    def check_record(self, *, tensor_checksum: str, header_sha256: str, source: str = "the registry record") -> None:
        """Refuse a file that differs from the checksums its registry record holds.

        The file's checksums only show it is self-consistent: whoever can write the file can also
        re-sign an edited header. The record pins the file that was published. Raises
        ModuleMismatchError naming the first checksum that differs.
        """
        mine = {"header_sha256": self.header_sha256, "tensor_checksum": self.metadata.tensor_checksum}
        theirs = {"header_sha256": header_sha256, "tensor_checksum": tensor_checksum}
        for field, have in mine.items():
            if have != theirs[field]:
                raise ModuleMismatchError(
                    field, theirs[field] or "(none)", have, module=self.metadata.module_id, expected_by=f"{source} has"
                )

    @property
    def token_count(self) -> int:
        return self.metadata.token_count

    @cached_property
    def layers(self) -> int:
        return (len(self.entries) - 1) // 2

    @property
    def data_bytes(self) -> int:
        return self.entries[-1].stop

    def _check_shapes(self) -> None:
        names = [e.name for e in self.entries]
        if names != [*layer_tensor_names(len(names) // 2), "token_ids"]:
            raise ModuleCorruptedError(f"{self.path}: unexpected tensors {names[:4]}...")
        t = self.token_count
        kv = self.entries[0]
        want_dtype = SAFETENSORS_DTYPES[torch_dtype(self.metadata)]
        for e in self.entries[:-1]:
            # [tokens, kv_heads, head_dim]; slicing, not indexing, so a 0-d shape is refused, not an IndexError.
            if len(e.shape) != 3 or e.shape[:1] != (t,) or e.shape != kv.shape or e.dtype != want_dtype:
                raise ModuleCorruptedError(f"{self.path}: tensor {e.name} {e.shape}/{e.dtype} disagrees with metadata")
        ids = self.entries[-1]
        if ids.shape != (t,) or ids.dtype != "I32":
            raise ModuleCorruptedError(f"{self.path}: token_ids {ids.shape}/{ids.dtype} is not I32 ({t},)")

    def _mapped(self) -> mmap.mmap:
        # A private copy-on-write mapping: writable for torch.frombuffer, yet nothing is copied.
        with self.path.open("rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def verify(self) -> None:
        """Hash the whole data section (zero-copy through mmap); raise if it differs."""
        self._check_digest(self._mapped_checksum(memoryview(self._mapped())[self.data_offset :]))

    def _mapped_checksum(self, data: memoryview) -> str:
        return checksum.tensors_checksum(data[e.start : e.stop] for e in self.entries)

    def _check_digest(self, actual: str) -> None:
        if actual != self.metadata.tensor_checksum:
            raise ModuleCorruptedError(
                f"{self.path}: tensor checksum does not verify (file damaged or truncated); the module is not served"
            )

    def token_ids(self) -> list[int]:
        last = self.entries[-1]
        with self.path.open("rb") as f:
            f.seek(self.data_offset + last.start)
            raw = f.read(last.nbytes)
        return torch.frombuffer(bytearray(raw), dtype=torch.int32).tolist()

    def tokens(self) -> list[int]:
        return self.token_ids()

    def load(self) -> LoadedModule:
        """Map the file (zero-copy), verify every byte, and return host-RAM tensor views."""
        mapped = self._mapped()
        view = memoryview(mapped)[self.data_offset :]
        self._check_digest(self._mapped_checksum(view))
        dtype = torch_dtype(self.metadata)
        kv = self.entries[0].shape
        flat = torch.frombuffer(view[: self.entries[-1].start], dtype=dtype)
        # Data order is k.0, v.0, k.1, v.1, ...: one [layers, 2, tokens, kv_heads, head_dim] tensor.
        kv_all = flat.view(self.layers, 2, *kv)
        ids = torch.frombuffer(view[self.entries[-1].start :], dtype=torch.int32)
        return LoadedModule(metadata=self.metadata, k=kv_all[:, 0], v=kv_all[:, 1], token_ids=ids, _keepalive=mapped)

    @property
    def in_memory(self) -> bool:
        return False

    def read_rows(self, into: RowsTarget | None = None) -> Iterator[LayerRows]:
        """Stream every layer's K/V rows from disk, verifying as it goes (see KVSource.read_rows).

        With `into`, the bytes are read straight into the caller's tensors: a restore copies nothing.
        """
        shape, dtype = self.entries[0].shape, torch_dtype(self.metadata)
        digests = []
        with self._sequential_reader() as f:
            for i in range(self.layers):
                k, v = (
                    into(i) if into is not None else (torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype))
                )
                for name, rows in ((f"k.{i}", k), (f"v.{i}", v)):
                    target = tensor_bytes(_check_target(rows, name, shape, dtype))
                    _read_exactly(f, target, self.path)
                    digests.append(checksum.submit(target))  # hashed on spare cores while the next layer is read
                yield LayerRows(i, k, v)
            ids = bytearray(self.entries[-1].nbytes)
            _read_exactly(f, memoryview(ids), self.path)
        digests.append(checksum.submit(memoryview(ids)))
        self._check_digest(checksum.combine(d.result() for d in digests))

    @contextlib.contextmanager
    def _sequential_reader(self) -> Iterator[BinaryIO]:
        """The file, unbuffered, positioned at the data section; the kernel reads ahead for us."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            os.lseek(fd, self.data_offset, os.SEEK_SET)
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                yield f
        finally:
            os.close(fd)


def _check_target(rows: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """`rows`, refused unless it has exactly the shape and dtype of one tensor of the module and is
    contiguous (a read into anything else would land in a temporary copy, or spill past it)."""
    if tuple(rows.shape) != shape or rows.dtype != dtype or not rows.is_contiguous():
        actual = f"{tuple(rows.shape)} {rows.dtype}{'' if rows.is_contiguous() else ' (not contiguous)'}"
        raise KVTensorMismatchError(f"{name} target", f"{shape} {dtype}, contiguous", actual)
    return rows


def _read_exactly(f: BinaryIO, target: memoryview, path: Path) -> None:
    done = 0
    while done < len(target):
        n = f.readinto(target[done:])  # type: ignore[attr-defined]  # a raw FileIO
        if not n:
            raise ModuleCorruptedError(f"{path}: file ended early")
        done += n


def _entries(header: dict[str, object], path: Path) -> tuple[TensorEntry, ...]:
    entries = sorted(
        (_entry(name, info, path) for name, info in header.items() if name != "__metadata__"), key=lambda e: e.start
    )
    cursor = 0
    for e in entries:
        if e.start != cursor:
            raise ModuleCorruptedError(f"{path}: tensor {e.name} leaves a hole or overlaps in the data section")
        cursor = e.stop
    return tuple(entries)


def _entry(name: str, info: object, path: Path) -> TensorEntry:
    """One tensor's index entry, checked to describe exactly the bytes its offsets span."""
    where = f"{path}: tensor {echo(name)}"
    if not isinstance(info, dict):
        raise ModuleCorruptedError(f"{where} has no description")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ITEMSIZE:
        raise ModuleCorruptedError(f"{where}: dtype {echo(str(dtype))} is not one a module uses")
    if not _naturals(shape):
        raise ModuleCorruptedError(f"{where}: shape must be a list of non-negative integers")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[1] < offsets[0]:
        raise ModuleCorruptedError(f"{where}: data_offsets must be [start, stop] with 0 <= start <= stop")
    start, stop = offsets
    described = math.prod(shape) * _ITEMSIZE[dtype]
    if stop - start != described:
        raise ModuleCorruptedError(f"{where}: data_offsets span {stop - start:,} bytes, shape and dtype {described:,}")
    return TensorEntry(name, dtype, tuple(shape), start, stop)


def _naturals(value: object) -> TypeGuard[list[int]]:
    # bool is an int subclass; JSON true is no offset.
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


@dataclass(frozen=True)
class LoadedModule:
    """A verified module held in host RAM (mmap views). k, v: [layers, tokens, kv_heads, head_dim]."""

    metadata: ModuleMetadata
    k: torch.Tensor
    v: torch.Tensor
    token_ids: torch.Tensor
    _keepalive: object = None

    @property
    def token_count(self) -> int:
        return self.metadata.token_count

    @property
    def in_memory(self) -> bool:
        return True

    def tokens(self) -> list[int]:
        return [int(t) for t in self.token_ids.tolist()]

    def read_rows(self, into: RowsTarget | None = None) -> Iterator[LayerRows]:
        """Views of the verified rows, or (with `into`) copies of them in the caller's tensors."""
        for i in range(self.k.shape[0]):
            k, v = self.k[i], self.v[i]  # [tokens, kv_heads, head_dim]
            if into is not None:
                k, v = _copy_into(into(i), k, v, i)
            yield LayerRows(i, k, v)


def _copy_into(
    target: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor, layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    into_k, into_v = target
    _check_target(into_k, f"k.{layer}", tuple(k.shape), k.dtype).copy_(k)
    _check_target(into_v, f"v.{layer}", tuple(v.shape), v.dtype).copy_(v)
    return into_k, into_v
