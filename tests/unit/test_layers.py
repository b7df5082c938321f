"""Services that need no model stay torch-free: importing them must not load torch or transformers (their
images carry neither). The import-linter contracts in pyproject.toml check the whole layer graph."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The router loads torch only when its classifier is enabled; the fallback service joins this list when it exists.
TORCH_FREE_ENTRY_POINTS = [
    "cag.registry.app",
    "cag.registry.servicer",
    "cag.registry.handlers",
    "cag.router.app",
    "cag.router.servicer",
    "cag.cli.main",
]


@pytest.mark.parametrize("module", TORCH_FREE_ENTRY_POINTS)
def test_importing_does_not_load_torch(module: str) -> None:
    probe = (
        f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"importing {module} loads {loaded}"
