"""The object store client against a real S3 endpoint: ranged parallel reads, missing objects, an outage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cag.errors import KVModuleNotFoundError, UnavailableError
from cag.objectstore import s3 as s3_module
from tests.integration.objectstore.conftest import S3Endpoint


def test_an_upload_comes_back_byte_for_byte_in_parallel_ranges(
    s3: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "RANGE_BYTES", 64 << 10)  # several ranges for a small file
    original = tmp_path / "module.safetensors"
    original.write_bytes(os.urandom(300_000))
    store, location = s3.store(), s3.location("acme/module.safetensors")
    store.upload(original, location)
    copy = tmp_path / "copy.safetensors"
    with copy.open("wb") as target:
        assert store.download_into(location, target) == 300_000
    assert copy.read_bytes() == original.read_bytes()


def test_a_missing_object_is_not_found_and_a_store_down_is_unavailable(s3: S3Endpoint, tmp_path: Path) -> None:
    store = s3.store()
    with (tmp_path / "x").open("wb") as target, pytest.raises(KVModuleNotFoundError, match="does not exist"):
        store.download_into(s3.location("nothing/here.safetensors"), target)
    s3.stop()
    with (tmp_path / "y").open("wb") as target, pytest.raises(UnavailableError, match="unreachable"):
        store.download_into(s3.location("nothing/here.safetensors"), target)
