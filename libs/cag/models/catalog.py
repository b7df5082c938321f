"""The model catalog: names the platform knows, materialized once into cached folders.

A catalog entry knows how to build its folder (convert a GGUF, or create a seeded
random model); the folder is written atomically, so a half-converted model is
never picked up. Revisions are fingerprints of the files actually on disk.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cag.errors import UnknownModelError
from cag.models.fingerprint import TOKENIZER_FILES, folder_fingerprint, model_files

Materializer = Callable[[Path], None]


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    name: str
    description: str
    materialize: Materializer


@dataclass(frozen=True, kw_only=True)
class ModelFiles:
    """A model folder on disk with its tokenizer folder and content revisions."""

    name: str
    path: Path
    tokenizer_path: Path

    @cached_property
    def config(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.path / "config.json").read_text())
        return loaded

    @cached_property
    def model_revision(self) -> str:
        return folder_fingerprint(self.path, model_files(self.path))

    @cached_property
    def tokenizer_revision(self) -> str:
        return folder_fingerprint(self.tokenizer_path, TOKENIZER_FILES)

    @property
    def context_window(self) -> int:
        return int(str(self.config["max_position_embeddings"]))


_CATALOG: dict[str, CatalogEntry] = {}


def register(entry: CatalogEntry) -> None:
    _CATALOG[entry.name] = entry


def catalog_names() -> list[str]:
    return sorted(_CATALOG)


def _materialize_atomically(entry: CatalogEntry, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=target.parent))
    try:
        staging.chmod(0o755)
        entry.materialize(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_model(name_or_path: str, models_dir: Path) -> ModelFiles:
    """A catalog name (materialized on first use) or a folder holding a HF-format model."""
    entry = _CATALOG.get(name_or_path)
    if entry is not None:
        target = models_dir / entry.name
        if not (target / "config.json").is_file():
            _materialize_atomically(entry, target)
        return ModelFiles(name=entry.name, path=target, tokenizer_path=target)
    folder = Path(name_or_path)
    if (folder / "config.json").is_file():
        return ModelFiles(name=folder.name, path=folder, tokenizer_path=folder)
    known = ", ".join(catalog_names())
    raise UnknownModelError(
        f"unknown model {name_or_path!r}: not a catalog name ({known}) nor a folder with config.json"
    )


def resolve_tokenizer(name_or_path: str | None, model: ModelFiles, models_dir: Path) -> ModelFiles:
    """The model with its tokenizer replaced when a separate one is named."""
    if name_or_path is None or name_or_path == model.name:
        return model
    other = resolve_model(name_or_path, models_dir)
    return ModelFiles(name=model.name, path=model.path, tokenizer_path=other.tokenizer_path)
