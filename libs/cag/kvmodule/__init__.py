"""The KV module file format: writing, opening, verifying and restoring modules (metadata itself is the
torch-free `cag.metadata`)."""

from cag.kvmodule.chain import EngineIdentity, KVSource, LayerRows, RowsTarget, order_chain
from cag.kvmodule.fileformat import write_module
from cag.kvmodule.metadata import DTYPES
from cag.kvmodule.reader import LoadedModule, ModuleFile

__all__ = [
    "DTYPES",
    "EngineIdentity",
    "KVSource",
    "LayerRows",
    "LoadedModule",
    "ModuleFile",
    "RowsTarget",
    "order_chain",
    "write_module",
]
