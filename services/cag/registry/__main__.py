"""`python -m cag.registry`: the registry service, configured from the environment (CAG_REGISTRY_*, CAG_*)."""

from __future__ import annotations

from cag.registry.app import main

if __name__ == "__main__":
    raise SystemExit(main())
