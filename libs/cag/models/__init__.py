"""Model catalog: named models materialized into cached folders with content revisions."""

from cag.models import builtin as builtin
from cag.models.builtin import SMOLLM2, TINY
from cag.models.catalog import ModelFiles, catalog_names, resolve_model, resolve_tokenizer

__all__ = ["SMOLLM2", "TINY", "ModelFiles", "builtin", "catalog_names", "resolve_model", "resolve_tokenizer"]
