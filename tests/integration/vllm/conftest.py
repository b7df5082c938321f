"""Modules of chosen lengths for the vLLM tests, computed by an engine and written in the module format."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

from cag.engine import Engine
from cag.kvmodule import ModuleFile
from cag.kvmodule.fileformat import write_module
from cag.metadata import ModuleMetadata


def write_chain_module(
    engine: Engine,
    template: ModuleMetadata,
    tokens: Sequence[int],
    folder: Path,
    *,
    parents: Sequence[ModuleFile] = (),
    name: str,
) -> ModuleFile:
    """A module of `tokens` on top of `parents`, its rows computed by `engine` (its identity in the metadata)."""
    rows = engine.prefill_module(list(parents), list(tokens))
    parent = parents[-1].metadata if parents else None
    chain_hash = hashlib.sha256(f"{parent.chain_hash if parent else ''}/{name}/{list(tokens)}".encode()).hexdigest()
    identity = engine.identity
    metadata = dataclasses.replace(
        template,
        module_id=name,
        token_count=len(tokens),
        parent_id=parent.module_id if parent else None,
        parent_chain_hash=parent.chain_hash if parent else None,
        chain_hash=chain_hash,
        model_revision=identity.model_revision,
        tokenizer_revision=identity.tokenizer_revision,
        engine_fingerprint=identity.engine_fingerprint,
    )
    path = folder / f"{name}.safetensors"
    write_module(path, metadata, rows.k, rows.v, list(tokens))
    return ModuleFile.open(path)
