"""Page-cache control for cold measurements: evict a file, and prove it is gone with mincore(2).

`evict` flushes dirty pages (fsync) and asks the kernel to drop the file's clean pages
(POSIX_FADV_DONTNEED). Pages that some process still has mapped are not dropped, so a
cold measurement must check `resident_fraction(path) == 0.0` rather than trust `evict`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.restype = ctypes.c_int
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


_LIBC = _libc()


def evict(path: Path) -> None:
    """Write back and drop every cached page of `path` (pages mapped elsewhere stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _os_error(call: str, path: Path) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call} failed: {os.strerror(err)}", str(path))


def resident_fraction(path: Path) -> float:
    """The fraction of `path`'s pages in the page cache (0.0 = fully cold, 1.0 = fully cached).

    Maps the file read-only (mapping alone faults nothing in) and asks mincore(2) which pages are resident.
    """
    size = path.stat().st_size
    if size == 0:
        return 0.0
    page = os.sysconf("SC_PAGE_SIZE")
    pages = -(-size // page)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _LIBC.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    if addr is None or addr == _MAP_FAILED:
        raise _os_error("mmap", path)
    try:
        vec = (ctypes.c_ubyte * pages)()
        if _LIBC.mincore(addr, size, vec) != 0:
            raise _os_error("mincore", path)
        return sum(b & 1 for b in vec) / pages
    finally:
        _LIBC.munmap(addr, size)
