"""The tensor checksum: BLAKE3 over the per-tensor BLAKE3 digests, in data order, as "blake3:<hex>".

Every byte is verified whenever a module enters a tier, including each restore from disk, so the
hash sits on the time-to-first-token path: BLAKE3 is cryptographic and about four times faster
than SHA-256 here (5.6 vs 1.3 GB/s on one core). Hashing tensors independently lets verification
run on spare cores while the file is still being read. The prefix names the algorithm, so a
reader refuses a checksum it cannot compute instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from blake3 import blake3

from cag.metadata import CHECKSUM_ALGORITHM as ALGORITHM

# The hash releases the GIL on large buffers: two workers hash two tensors truly in parallel.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kv-checksum")


def tensor_digest(data: memoryview) -> bytes:
    return blake3(data).digest()


def combine(digests: Iterable[bytes]) -> str:
    return f"{ALGORITHM}:{blake3(b''.join(digests)).hexdigest()}"


def submit(data: memoryview) -> Future[bytes]:
    """Hash one tensor's bytes in the background; the buffer must not change until the future is done."""
    return _POOL.submit(tensor_digest, data)


def tensors_checksum(buffers: Iterable[memoryview]) -> str:
    return combine(f.result() for f in [submit(b) for b in buffers])
