"""Page-cache control: evict drops a file's pages, reading brings them back (checked with mincore)."""

from __future__ import annotations

import os
from pathlib import Path

from cag.bench.pagecache import evict, resident_fraction


def test_evict_then_read(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(4 << 20))
    evict(path)
    assert resident_fraction(path) == 0.0
    with path.open("rb") as f:
        while f.read(1 << 20):
            pass
    assert resident_fraction(path) > 0.0
    evict(path)
    assert resident_fraction(path) == 0.0


def test_empty_file_is_cold(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.touch()
    evict(path)
    assert resident_fraction(path) == 0.0
