"""The cache pool's domain errors (each declares its own stable reason; see cag.errors)."""

from __future__ import annotations

from cag.errors import CagError, Status


class TierFullError(CagError):
    """A module cannot enter a tier: it is larger than the tier's budget, or the pinned modules there (and those
    running requests hold) leave too little room even after every other module is evicted. Nothing was evicted."""

    status = Status.RESOURCE_EXHAUSTED
    reason = "TIER_FULL"

    def __init__(self, *, tier: str, module_id: str, module_bytes: int, capacity_bytes: int, pinned_bytes: int) -> None:
        """tier: the tier's name; sizes in bytes; pinned_bytes: what the tier's pinned and held modules occupy."""
        self.tier = tier
        self.module_id = module_id
        self.module_bytes = module_bytes
        self.capacity_bytes = capacity_bytes
        self.pinned_bytes = pinned_bytes
        super().__init__(
            f"tier {tier} cannot hold module {module_id} ({module_bytes} bytes): capacity {capacity_bytes} bytes, "
            f"{pinned_bytes} of them pinned or in use"
        )


class ModuleNotResidentError(CagError):
    """The module is in no tier of this pool (it may still be in the registry: the pool loads it on use)."""

    status = Status.NOT_FOUND
    reason = "MODULE_NOT_RESIDENT"

    def __init__(self, module_id: str) -> None:
        self.module_id = module_id
        super().__init__(f"module {module_id} is resident in no tier of this cache pool")


class UnknownModuleError(CagError):
    """The registry has no record of the module the request names."""

    status = Status.NOT_FOUND
    reason = "MODULE_NOT_REGISTERED"

    def __init__(self, module_id: str) -> None:
        self.module = module_id
        super().__init__(f"module {module_id} is not in the registry")


class UnsupportedStorageError(CagError):
    """A module's storage_uri names a store this cache pool cannot read (file:// only, for now)."""

    status = Status.FAILED_PRECONDITION
    reason = "STORAGE_UNSUPPORTED"

    def __init__(self, module_id: str, scheme: str) -> None:
        self.module = module_id
        self.field = "storage_uri"
        super().__init__(f"module {module_id}: storage_uri scheme {scheme!r} is not supported (file:// only)")
