"""The tensor checksum: sha256 over the per-tensor sha256 digests, in data order.

Hashing tensors independently lets verification run on several cores while the
file is still being read, so checking every byte costs little more than reading it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

# hashlib releases the GIL on large buffers: two workers hash two tensors truly in parallel.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kv-checksum")


def tensor_digest(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def combine(digests: Iterable[bytes]) -> str:
    return hashlib.sha256(b"".join(digests)).hexdigest()


def submit(data: memoryview) -> Future[bytes]:
    """Hash one tensor's bytes in the background; the buffer must not change until the future is done."""
    return _POOL.submit(tensor_digest, data)


def tensors_checksum(buffers: Iterable[memoryview]) -> str:
    return combine(f.result() for f in [submit(b) for b in buffers])
