"""Prompt layouts: the versioned spec and its binding to a model's chat template."""

from cag.layout.prompt import PromptLayout
from cag.layout.spec import Layout, layout_hash, layout_json, load_layout, parse_layout

__all__ = ["Layout", "PromptLayout", "layout_hash", "layout_json", "load_layout", "parse_layout"]
