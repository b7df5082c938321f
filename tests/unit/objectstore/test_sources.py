"""Sources by URI: an s3:// prefix is copied to a scratch folder; its keys are outside input and checked."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import pytest

from cag.errors import InvalidFieldError
from cag.objectstore import S3Location
from cag.objectstore import sources as sources_module
from cag.objectstore.sources import check_source_uri, readable_source


class FakeStore:
    """Objects in a dict, keyed by (bucket, key): the two calls a source read makes."""

    def __init__(self, objects: dict[str, bytes], bucket: str = "kbase") -> None:
        self.bucket = bucket
        self.objects = objects

    def list_under(self, prefix: S3Location, limit: int) -> list[tuple[str, int]]:
        found = sorted((k, len(v)) for k, v in self.objects.items() if k.startswith(prefix.key))
        return found[: limit + 1]

    def download_into(self, location: S3Location, target: IO[bytes]) -> int:
        data = self.objects[location.key]
        target.write(data)
        return len(data)


def read_all(uri: str, store: FakeStore) -> dict[str, bytes]:
    with readable_source(uri, store) as folder:  # type: ignore[arg-type]
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_object_under_the_prefix_is_copied_at_its_relative_path() -> None:
    store = FakeStore({"docs/a.md": b"A", "docs/tools/t.json": b"{}", "docs/sub/": b"", "docs-old/x.md": b"X"})
    assert read_all("s3://kbase/docs", store) == {"a.md": b"A", "tools/t.json": b"{}"}


def test_the_scratch_copy_is_gone_after_the_block() -> None:
    with readable_source("s3://kbase/docs/", FakeStore({"docs/a.md": b"A"})) as folder:  # type: ignore[arg-type]
        assert (folder / "a.md").exists()
    assert not folder.exists()


@pytest.mark.parametrize("key", ["docs/../escape.md", "docs/./a.md", "docs//a.md", "docs/a\\b.md", "docs/a\nb.md"])
def test_a_key_that_is_not_a_plain_relative_path_is_refused(key: str) -> None:
    with pytest.raises(InvalidFieldError, match="not a plain relative path") as refused:
        read_all("s3://kbase/docs", FakeStore({"docs/ok.md": b"A", key: b"B"}))
    assert refused.value.field == "source_uri"


def test_an_empty_prefix_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="holds no objects"):
        read_all("s3://kbase/docs", FakeStore({"other/a.md": b"A"}))


def test_too_many_objects_are_refused_before_any_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module, "MAX_SOURCE_OBJECTS", 2)
    with pytest.raises(InvalidFieldError, match="more than 2 objects"):
        read_all("s3://kbase/docs", FakeStore({f"docs/{i}.md": b"A" for i in range(3)}))


def test_too_many_bytes_are_refused_before_any_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module, "MAX_SOURCE_BYTES", 10)
    with pytest.raises(InvalidFieldError, match="11 bytes"):
        read_all("s3://kbase/docs", FakeStore({"docs/a.md": b"123456", "docs/b.md": b"12345"}))


def test_an_s3_source_needs_an_object_store() -> None:
    with pytest.raises(InvalidFieldError, match="no object store"), readable_source("s3://kbase/docs", None):
        pass


def test_a_local_folder_is_read_where_it_is(tmp_path: Path) -> None:
    with readable_source(tmp_path.as_uri(), None) as folder:
        assert folder == tmp_path


@pytest.mark.parametrize("uri", ["s3://kbase/../etc", "s3://Bad_Bucket/docs", "s3://kbase/docs?x=1", "relative/docs"])
def test_malformed_source_uris_are_refused_naming_the_field(uri: str) -> None:
    with pytest.raises(InvalidFieldError) as refused:
        check_source_uri(uri)
    assert refused.value.field == "source_uri"
