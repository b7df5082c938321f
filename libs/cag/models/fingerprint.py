"""Content fingerprints of model and tokenizer folders: the revision is the files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(folder: Path, names: Iterable[str]) -> str:
    """sha256 over (name, file sha256) of the named files that exist, in name order."""
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        path = folder / name
        if path.is_file():
            digest.update(f"{name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def model_files(folder: Path) -> list[str]:
    return ["config.json", *sorted(p.name for p in folder.glob("*.safetensors"))]
