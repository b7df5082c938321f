"""`python -m cag.router`: the router service, configured from the environment (CAG_ROUTER_*, CAG_*)."""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from cag.errors import CagError, validation_problems
from cag.router.app import serve
from cag.router.settings import RouterSettings

log = logging.getLogger("cag.router")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = RouterSettings()
    except ValidationError as e:
        log.error("cannot start the router: %s", validation_problems(e, root="settings"))
        return 2
    except CagError as e:
        log.error("cannot start the router: %s", e)
        return 2
    try:
        asyncio.run(serve(settings))
    except CagError as e:  # a key that cannot be read, a classifier that cannot load: said in one line
        log.error("cannot start the router: %s", e)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
