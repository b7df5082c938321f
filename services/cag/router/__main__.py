"""`python -m cag.router`: the router service, configured from the environment (CAG_ROUTER_*, CAG_*)."""

from __future__ import annotations

from cag.router.app import serve
from cag.router.settings import RouterSettings
from cag.service_process import service_main


def main() -> int:
    return service_main("router", RouterSettings, lambda: serve)


if __name__ == "__main__":
    raise SystemExit(main())
