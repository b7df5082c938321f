"""The registry's pure core: lifecycle states, invalidation triggers, records, the store interface (and its
in-memory implementation), the audit trail, the TTL job and the rules in RegistryCore. Imports no gRPC,
FastStream, generated protos or database driver (an import-linter contract keeps it so)."""

from cag.registry.core.registry import PublishRefusedError, RegistryCore, canonical_layout_hash

__all__ = ["PublishRefusedError", "RegistryCore", "canonical_layout_hash"]
