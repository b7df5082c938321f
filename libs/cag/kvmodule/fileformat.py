"""The KV module file: safetensors with token-major per-layer K/V, token ids and string metadata.

Layout on disk (standard safetensors, readable by `safetensors.safe_open`):
    u64 little-endian header length | JSON header padded with spaces to 8 bytes | data
Tensors, in data order: k.0, v.0, k.1, v.1, ... ([tokens, kv_heads, head_dim] each), then
token_ids (int32 [tokens]). Layer-interleaved order lets a restore stream layer by layer.

Two checksums make the file fail closed: `tensor_checksum` covers every tensor (see checksum.py) and
`header_sha256` covers the canonical header (metadata and tensor index) without itself.
The writer emits canonical JSON, so identical inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cag.canonical import compact_json
from cag.errors import KVTensorMismatchError
from cag.kvmodule.atomic import atomic_writer
from cag.kvmodule.checksum import tensors_checksum
from cag.kvmodule.metadata import SAFETENSORS_DTYPES, torch_dtype
from cag.metadata import ModuleMetadata

HEADER_HASH_KEY = "header_sha256"
_ALIGN = 8


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offset into the data section
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


def layer_tensor_names(layers: int) -> list[str]:
    return [name for i in range(layers) for name in (f"k.{i}", f"v.{i}")]


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous tensor, without a copy."""
    return t.contiguous().view(torch.uint8).numpy().data.cast("B")


def header_digest(header: dict[str, object]) -> str:
    meta = header["__metadata__"]
    assert isinstance(meta, dict)
    unsigned = {**header, "__metadata__": {k: v for k, v in meta.items() if k != HEADER_HASH_KEY}}
    return hashlib.sha256(compact_json(unsigned).encode()).hexdigest()


def _module_tensors(k: torch.Tensor, v: torch.Tensor, token_ids: Sequence[int]) -> Iterator[tuple[str, torch.Tensor]]:
    # k, v: [layers, tokens, kv_heads, head_dim]
    for i in range(k.shape[0]):
        yield f"k.{i}", k[i].contiguous()
        yield f"v.{i}", v[i].contiguous()
    yield "token_ids", torch.tensor(list(token_ids), dtype=torch.int32)


@dataclass(frozen=True)
class WrittenModule:
    metadata: ModuleMetadata  # with tensor_checksum filled in
    header_sha256: str  # the header's checksum: the registry record holds it with tensor_checksum


def _check_tensors(metadata: ModuleMetadata, k: torch.Tensor, v: torch.Tensor, tokens: int) -> None:
    """KVTensorMismatchError unless k and v are alike, hold `tokens` rows and are in the module's dtype."""
    if v.shape != k.shape:
        raise KVTensorMismatchError("v.shape", f"k's {tuple(k.shape)}", str(tuple(v.shape)))
    if k.dim() != 4 or k.shape[1] != tokens:
        raise KVTensorMismatchError("k.shape", f"[layers, {tokens} tokens, kv_heads, head_dim]", str(tuple(k.shape)))
    for name, t in (("k", k), ("v", v)):
        if t.dtype != torch_dtype(metadata):
            raise KVTensorMismatchError(f"{name}.dtype", str(torch_dtype(metadata)), str(t.dtype))


def write_module(
    path: Path, metadata: ModuleMetadata, k: torch.Tensor, v: torch.Tensor, token_ids: Sequence[int]
) -> WrittenModule:
    """Write a module atomically; returns its final metadata and header checksum.

    k, v: [layers, tokens, kv_heads, head_dim] in the module's dtype; token_ids: [tokens].
    """
    _check_tensors(metadata, k, v, len(token_ids))
    tensors = list(_module_tensors(k, v, token_ids))
    index: dict[str, object] = {}
    offset = 0
    for name, t in tensors:
        data = tensor_bytes(t)
        dtype = "I32" if t.dtype == torch.int32 else SAFETENSORS_DTYPES[t.dtype]
        index[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    final = replace(metadata, tensor_checksum=tensors_checksum(tensor_bytes(t) for _, t in tensors))
    header: dict[str, object] = {"__metadata__": final.to_header(), **index}
    signature = header_digest(header)
    header["__metadata__"] = {**final.to_header(), HEADER_HASH_KEY: signature}
    encoded = compact_json(header).encode()
    encoded += b" " * (-len(encoded) % _ALIGN)
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, t in tensors:
            f.write(tensor_bytes(t))
    return WrittenModule(final, signature)
