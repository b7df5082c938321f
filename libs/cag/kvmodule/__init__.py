"""The KV module file format: writing, opening, verifying and restoring modules."""

from cag.kvmodule.chain import EngineIdentity, KVSource, order_chain
from cag.kvmodule.fileformat import write_module
from cag.kvmodule.metadata import DTYPES, PUBLIC_TENANT, AclScope, GoldenStatus, ModuleMetadata
from cag.kvmodule.reader import LoadedModule, ModuleFile

__all__ = [
    "DTYPES",
    "PUBLIC_TENANT",
    "AclScope",
    "EngineIdentity",
    "GoldenStatus",
    "KVSource",
    "LoadedModule",
    "ModuleFile",
    "ModuleMetadata",
    "order_chain",
    "write_module",
]
