"""Atomic file creation: readers see the old file or the complete new one, never a part.

The data goes to an unnamed O_TMPFILE inode in the target directory, so a
compile killed at any point (even by SIGKILL) leaves no partial file behind; it
gets a name only after fsync, and reaches its final name by an atomic rename.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cag.errors import InvalidInputError


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_dir(folder: Path) -> None:
    """Raise InvalidInputError unless files can be created in `folder`, or in the directory that would hold it.

    Meant to run before expensive work: a compile should not prefill for minutes to find out at the
    end that its output directory is a file or on a read-only file system. Nothing is created here.
    """
    existing = folder
    while not existing.exists() and not existing.is_symlink():  # a dangling link is not a directory either
        existing = existing.parent
    where = f"output directory {folder}" + ("" if existing == folder else f" (under {existing})")
    if not existing.is_dir():
        raise InvalidInputError(f"{where}: {existing} is not a directory")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise InvalidInputError(f"{where}: {existing} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{where}: {existing} is not writable")


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it replaces `path` durably, on error nothing appears."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f".{path.name}.{os.getpid()}.staged"
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
        named = False
    except OSError:  # file systems without O_TMPFILE: a named temp file, removed on failure
        fd = os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        named = True
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            yield f
            f.flush()
            os.fsync(fd)
        if not named:
            # linkat(AT_SYMLINK_FOLLOW) on the /proc fd link names the unnamed inode; passing a
            # dir fd is what makes Python call linkat rather than link().
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(f"/proc/self/fd/{fd}", staged.name, dst_dir_fd=folder_fd, follow_symlinks=True)
            finally:
                os.close(folder_fd)
        os.replace(staged, path)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise
    finally:
        os.close(fd)
