"""Opening, verifying and restoring KV module files. Every path fails closed.

`ModuleFile.open` verifies the header checksum and the structure; tensor bytes are
verified by `verify()` (mmap), by `load()` before a host-RAM copy is handed out, and
by `write_into()` while it streams a module from disk into engine buffers.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from cag.engine.cache import KVCache
from cag.errors import KVModuleNotFoundError, ModuleCorruptedError
from cag.kvmodule import checksum
from cag.kvmodule.fileformat import HEADER_HASH_KEY, TensorEntry, header_digest, layer_tensor_names, tensor_bytes
from cag.kvmodule.metadata import SAFETENSORS_DTYPES, ModuleMetadata

_MAX_HEADER = 64 << 20
LayerCallback = Callable[[int], None]


def _parse_header(raw: bytes, path: Path) -> dict[str, object]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModuleCorruptedError(f"{path}: header is not valid JSON ({e})") from e
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise ModuleCorruptedError(f"{path}: header has no metadata")
    return header


@dataclass(frozen=True)
class ModuleFile:
    """A module file whose header verified; tensors are read on demand."""

    path: Path
    metadata: ModuleMetadata
    entries: tuple[TensorEntry, ...]  # in data order
    data_offset: int

    @classmethod
    def open(cls, path: Path) -> ModuleFile:
        try:
            with path.open("rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise ModuleCorruptedError(f"{path}: file is truncated ({len(prefix)} bytes)")
                (size,) = struct.unpack("<Q", prefix)
                if size > _MAX_HEADER:
                    raise ModuleCorruptedError(f"{path}: header length {size} is implausible")
                raw = f.read(size)
            file_size = path.stat().st_size
        except FileNotFoundError as e:
            raise KVModuleNotFoundError(f"module file {path} does not exist") from e
        if len(raw) < size:
            raise ModuleCorruptedError(f"{path}: file is truncated inside the header")
        header = _parse_header(raw, path)
        meta = header["__metadata__"]
        assert isinstance(meta, dict)
        if meta.get(HEADER_HASH_KEY) != header_digest(header):
            raise ModuleCorruptedError(f"{path}: header checksum does not verify (metadata altered or damaged)")
        metadata = ModuleMetadata.from_header({k: str(v) for k, v in meta.items() if k != HEADER_HASH_KEY})
        entries = _entries(header, path)
        data_offset = 8 + size
        expected_size = data_offset + (entries[-1].stop if entries else 0)
        if file_size != expected_size:
            raise ModuleCorruptedError(f"{path}: file is {file_size} bytes, header describes {expected_size}")
        module = cls(path=path, metadata=metadata, entries=entries, data_offset=data_offset)
        module._check_shapes()
        return module

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
        want_dtype = SAFETENSORS_DTYPES[self.metadata.torch_dtype]
        for e in self.entries[:-1]:
            if e.shape[0] != t or e.shape != kv.shape or e.dtype != want_dtype:
                raise ModuleCorruptedError(f"{self.path}: tensor {e.name} {e.shape}/{e.dtype} disagrees with metadata")
        if self.entries[-1].shape != (t,):
            raise ModuleCorruptedError(f"{self.path}: token_ids shape {self.entries[-1].shape} != ({t},)")

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

    def load(self) -> LoadedModule:
        """Map the file (zero-copy), verify every byte, and return host-RAM tensor views."""
        mapped = self._mapped()
        view = memoryview(mapped)[self.data_offset :]
        self._check_digest(self._mapped_checksum(view))
        dtype = self.metadata.torch_dtype
        kv = self.entries[0].shape
        flat = torch.frombuffer(view[: self.entries[-1].start], dtype=dtype)
        # Data order is k.0, v.0, k.1, v.1, ...: one [layers, 2, tokens, kv_heads, head_dim] tensor.
        kv_all = flat.view(self.layers, 2, *kv)
        ids = torch.frombuffer(view[self.entries[-1].start :], dtype=torch.int32)
        return LoadedModule(metadata=self.metadata, k=kv_all[:, 0], v=kv_all[:, 1], token_ids=ids, _keepalive=mapped)

    def write_into(self, cache: KVCache, start: int, on_layer: LayerCallback | None = None) -> None:
        """Stream K/V rows from disk straight into cache rows [start, start+tokens), verifying as it goes.

        `on_layer(i)` is called as soon as layer i's rows are in place (not yet verified: the
        checksum is only known at the end, when this returns or raises ModuleCorruptedError).
        """
        t = self.token_count
        pending = []
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            os.lseek(fd, self.data_offset, os.SEEK_SET)
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                for i in range(self.layers):
                    for buf in (cache.k[i, start : start + t], cache.v[i, start : start + t]):
                        target = tensor_bytes(buf)
                        _read_exactly(f, target, self.path)
                        pending.append(checksum.submit(target))
                    if on_layer is not None:
                        on_layer(i)
                ids = bytearray(self.entries[-1].nbytes)
                _read_exactly(f, memoryview(ids), self.path)
        finally:
            os.close(fd)
        pending.append(checksum.submit(memoryview(ids)))
        self._check_digest(checksum.combine(p.result() for p in pending))


def _read_exactly(f: object, target: memoryview, path: Path) -> None:
    readinto = f.readinto  # type: ignore[attr-defined]
    done = 0
    while done < len(target):
        n = readinto(target[done:])
        if not n:
            raise ModuleCorruptedError(f"{path}: file ended early")
        done += n


def _entries(header: dict[str, object], path: Path) -> tuple[TensorEntry, ...]:
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ModuleCorruptedError(f"{path}: tensor {name} has no description")
        start, stop = info["data_offsets"]
        entries.append(TensorEntry(name, str(info["dtype"]), tuple(info["shape"]), int(start), int(stop)))
    entries.sort(key=lambda e: e.start)
    cursor = 0
    for e in entries:
        if e.start != cursor or e.stop < e.start:
            raise ModuleCorruptedError(f"{path}: tensor {e.name} leaves a hole or overlaps in the data section")
        cursor = e.stop
    return tuple(entries)


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

    def write_into(self, cache: KVCache, start: int, on_layer: LayerCallback | None = None) -> None:
        t = self.token_count
        for i in range(self.k.shape[0]):
            cache.k[i, start : start + t].copy_(self.k[i])
            cache.v[i, start : start + t].copy_(self.v[i])
            if on_layer is not None:
                on_layer(i)
