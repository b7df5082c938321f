"""Knowledge sources by URI: a file:// folder is read where it is; an s3:// prefix (a "folder" of objects) is
copied into a scratch folder first and read there.

The objects under a prefix are outside input: their keys become paths, so each one must be a plain relative
path below the prefix (no '..', '.', empty segment, backslash or control character), and the count and total
size are bounded before anything is downloaded.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from cag.canonical.uris import local_path
from cag.errors import InvalidFieldError
from cag.identifiers import is_control
from cag.objectstore.s3 import ObjectStore, S3Location, is_s3_uri, parse_s3_uri
from cag.source_roots import SourceRoots

MAX_SOURCE_OBJECTS = 10_000
MAX_SOURCE_BYTES = 256 << 20


def check_source_uri(uri: str, field: str = "source_uri") -> None:
    """InvalidFieldError naming `field` unless `uri` is an existing local folder or a well-formed s3:// prefix
    (whether the prefix holds objects is known only when it is read)."""
    if is_s3_uri(uri):
        _prefix(uri, field)
    else:
        local_path(uri, field)


def check_source_root(uri: str, tenant: str, roots: SourceRoots, field: str = "source_uri") -> None:
    """InvalidFieldError naming `field` unless the source lies under one of `tenant`'s roots: by its URI, and for a
    local folder also where it really is (a symbolic link out of the root is refused)."""
    root = roots.check(uri, tenant, field)
    if is_s3_uri(uri):
        return
    real_root = Path(urlparse(root).path).resolve()
    if not local_path(uri, field).resolve().is_relative_to(real_root):
        raise InvalidFieldError(field, f"{uri[:200]!r} leads out of its source root {root} (a symbolic link)")


@contextlib.contextmanager
def readable_source(uri: str, store: ObjectStore | None, field: str = "source_uri") -> Iterator[Path]:
    """The folder to read the source `uri` from, for the duration of the block: the folder itself for file://, a
    scratch copy of every object under the prefix for s3:// (deleted afterwards)."""
    if not is_s3_uri(uri):
        yield local_path(uri, field)
        return
    prefix = _prefix(uri, field)
    if store is None:
        raise InvalidFieldError(field, f"{uri}: no object store is configured here (CAG_S3_*)")
    objects = _objects(store, prefix, uri, field)
    with tempfile.TemporaryDirectory(prefix="cag-source-") as scratch:
        root = Path(scratch)
        for relative, key in objects:
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as f:
                store.download_into(S3Location(prefix.bucket, key), f)
        yield root


def _prefix(uri: str, field: str) -> S3Location:
    """The URI's prefix, ending with '/' (so that s3://b/docs does not take s3://b/docs-old/ along)."""
    return parse_s3_uri(uri if uri.endswith("/") else uri + "/", field)


def _objects(store: ObjectStore, prefix: S3Location, uri: str, field: str) -> list[tuple[str, str]]:
    """(path relative to the prefix, key) of every object under it; InvalidFieldError for none, too many, too
    large in all, or a key that is not a plain relative path."""
    listed = store.list_under(prefix, MAX_SOURCE_OBJECTS)
    if len(listed) > MAX_SOURCE_OBJECTS:
        raise InvalidFieldError(field, f"{uri} holds more than {MAX_SOURCE_OBJECTS} objects")
    total = sum(size for _, size in listed)
    if total > MAX_SOURCE_BYTES:
        raise InvalidFieldError(field, f"{uri} holds {total} bytes, more than {MAX_SOURCE_BYTES} for a source")
    objects = []
    for key, _ in listed:
        relative = key[len(prefix.key) :]
        if relative.endswith("/"):
            continue  # a "folder" marker some tools create: no content
        if not _plain_relative(relative):
            raise InvalidFieldError(field, f"object key {key!r} under {uri} is not a plain relative path")
        objects.append((relative, key))
    if not objects:
        raise InvalidFieldError(field, f"{uri} holds no objects")
    return objects


def _plain_relative(path: str) -> bool:
    parts = path.split("/")
    return (
        "\\" not in path and not any(is_control(c) for c in path) and all(part not in ("", ".", "..") for part in parts)
    )
