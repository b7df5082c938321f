"""The pool's data tiers below the engine: host RAM (verified anonymous copies), the local disk (a cache directory of
verified module files) and the origin (the registry record's storage_uri: a file:// path, or an s3:// object that
reaches the engine through the local disk tier).

Every copy is verified as it enters its tier: its tensor checksum, and the file against the registry record
(tensor_checksum and header_sha256: a header edited and re-signed by hand is refused too). Any failure raises
ModuleCorruptedError or ModuleMismatchError and leaves nothing behind in the tier. Blocking I/O: the pool runs
these calls in worker threads.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import torch

from cag.cachepool.core.errors import UnsupportedStorageError
from cag.cachepool.core.snapshot import ModuleRecord
from cag.errors import CagError, ModuleCorruptedError
from cag.kvmodule import LoadedModule, ModuleFile
from cag.kvmodule.atomic import atomic_writer
from cag.kvmodule.checksum import tensors_checksum
from cag.kvmodule.metadata import DTYPES
from cag.objectstore import ObjectStore, is_s3_uri, parse_s3_uri
from cag.objectstore.s3 import S3Settings

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
COPY_CHUNK = 8 << 20


class Origins:
    """Where published module files are: a local path (file://) or an object in the object store (s3://, read in
    parallel ranges; the client is made on first use)."""

    def __init__(self, s3: S3Settings | None = None) -> None:
        self._s3 = s3
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()

    def local_path(self, record: ModuleRecord) -> Path | None:
        """The module's file when its origin is on this machine; None for an object-store origin."""
        if is_s3_uri(record.storage_uri):
            return None
        uri = urlparse(record.storage_uri)
        if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
            raise UnsupportedStorageError(record.module_id, uri.scheme or record.storage_uri[:16])
        return Path(unquote(uri.path))

    def fill(self, record: ModuleRecord, target: IO[bytes]) -> None:
        """Every byte of the origin into `target`; the caller verifies them."""
        path = self.local_path(record)
        if path is not None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, target, COPY_CHUNK)
            return
        self._object_store(record).download_into(parse_s3_uri(record.storage_uri), target)

    def _object_store(self, record: ModuleRecord) -> ObjectStore:
        with self._lock:
            if self._store is None:
                if self._s3 is None:
                    raise UnsupportedStorageError(record.module_id, "s3 (no object store configured)")
                self._store = ObjectStore(self._s3)
            return self._store


def open_checked(path: Path, record: ModuleRecord, *, tier: str) -> ModuleFile:
    """Opens a module file (header verified) and checks it is the file the registry published."""
    module = ModuleFile.open(path)
    if module.metadata.module_id != record.module_id:
        raise ModuleCorruptedError(f"{tier} copy of module {record.module_id} holds module {module.metadata.module_id}")
    module.check_record(tensor_checksum=record.tensor_checksum, header_sha256=record.header_sha256)
    return module


def ram_copy(module: ModuleFile) -> LoadedModule:
    """The file's tensors copied into anonymous host memory and verified there: the bytes served are the bytes
    checked. (ModuleFile.load maps the file privately, and pages never written still follow the file: a later
    change on disk would show through.) k, v: [layers, tokens, kv_heads, head_dim]."""
    data = bytearray(module.data_bytes)
    with module.path.open("rb") as f:
        f.seek(module.data_offset)
        if f.readinto(data) != module.data_bytes:
            raise ModuleCorruptedError(f"{module.path}: shorter than its header says; the module is not served")
    view = memoryview(data)
    if tensors_checksum(view[e.start : e.stop] for e in module.entries) != module.metadata.tensor_checksum:
        raise ModuleCorruptedError(f"{module.path}: tensor checksum does not verify; the module is not served")
    ids_start = module.entries[-1].start
    flat = torch.frombuffer(view[:ids_start], dtype=DTYPES[module.metadata.dtype])
    # Data order is k.0, v.0, k.1, v.1, ...: one [layers, 2, tokens, kv_heads, head_dim] tensor.
    kv = flat.view(module.layers, 2, *module.entries[0].shape)
    ids = torch.frombuffer(view[ids_start:], dtype=torch.int32)
    return LoadedModule(metadata=module.metadata, k=kv[:, 0], v=kv[:, 1], token_ids=ids, _keepalive=data)


class DiskTier:
    """Verified module files in `folder`, one per module id, written atomically (never half a file)."""

    def __init__(self, folder: Path, origins: Origins | None = None) -> None:
        self.folder = folder
        self.origins = origins or Origins()
        folder.mkdir(parents=True, exist_ok=True)

    def path_of(self, module_id: str) -> Path:
        return self.folder / f"{module_id}{SUFFIX}"

    def copy_in(self, record: ModuleRecord) -> ModuleFile:
        """Copies the module in from its origin, then verifies the copy (header, record, every tensor byte)."""
        target = self.path_of(record.module_id)
        with atomic_writer(target) as dst:
            self.origins.fill(record, dst)
        try:
            module = open_checked(target, record, tier="local disk")
            module.verify()
        except CagError:
            self.discard(record.module_id)
            raise
        return module

    def discard(self, module_id: str) -> None:
        self.path_of(module_id).unlink(missing_ok=True)

    def reindex(self) -> list[ModuleFile]:
        """The module files already here (a restart), known by their own verified headers; a file that does not
        open, or is named for another module, is removed. Tensor bytes are verified when a file is next read."""
        found = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            try:
                module = ModuleFile.open(path)
            except CagError as e:
                log.warning("local disk tier: removing %s: %s", path.name, e)
                path.unlink(missing_ok=True)
                continue
            if path != self.path_of(module.metadata.module_id):
                log.warning("local disk tier: removing %s: it holds module %s", path.name, module.metadata.module_id)
                path.unlink(missing_ok=True)
                continue
            found.append(module)
        return found
