"""Secrets kept in the run directory: generated once, written with mode 0600 and never through a wider mode."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SECRET_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
AUTH_KEY_BYTES = 32
# 24 random bytes: 192 bits, URL-safe characters only, so the password needs no escaping in a
# connection URL or in the nats-server configuration.
PASSWORD_BYTES = 24


def generate_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def write_secret(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`; the file is 0600 from the moment it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def create_secret_once(path: Path, text: str) -> bool:
    """Write `text` to `path` (0600) unless it exists; True when this call created it.

    Exclusive creation: two processes racing both end up reading the same secret.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def ensure_auth_key(path: Path) -> Path:
    """The service-token signing key: 32 random bytes, hex-encoded, created once (0600) and then kept."""
    create_secret_once(path, secrets.token_hex(AUTH_KEY_BYTES) + "\n")
    return path


def make_private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a directory only its owner can enter (0700, whatever the umask)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path
