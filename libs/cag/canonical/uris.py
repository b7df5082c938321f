"""Where a source or module URI points on this machine: file:// URIs (and absolute paths) only, no '..'."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from cag.errors import InvalidFieldError


def local_path(uri: str, field: str) -> Path:
    """The folder or file a file:// URI (or a plain absolute path) names; other schemes are refused."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
        raise InvalidFieldError(field, f"{uri!r}: only file:// URIs can be read here")
    path = Path(unquote(parsed.path))
    if not path.is_absolute() or ".." in path.parts:
        raise InvalidFieldError(field, f"{uri!r} must be an absolute path without '..'")
    if not path.exists():
        raise InvalidFieldError(field, f"{uri!r} does not exist")
    return path
