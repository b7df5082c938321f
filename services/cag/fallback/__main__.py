"""`python -m cag.fallback`: the fallback service, configured from the environment (CAG_FALLBACK_*, CAG_*).

The settings are read and the engine runtime tuned before the service's modules load: they import torch,
which reads its OpenMP settings as it loads.
"""

from __future__ import annotations

import asyncio
import logging
import os

from pydantic import ValidationError

from cag.engine_runtime import tune_engine_runtime
from cag.errors import CagError, validation_problems
from cag.fallback.settings import FallbackSettings

log = logging.getLogger("cag.fallback")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = FallbackSettings()
    except ValidationError as e:
        log.error("cannot start the fallback: %s", validation_problems(e, root="settings"))
        return 2
    except CagError as e:
        log.error("cannot start the fallback: %s", e)
        return 2
    tune_engine_runtime(settings.num_threads, os.environ)
    from cag.fallback.app import serve  # only now: it loads torch (the embedding model), which must see the tuning

    try:
        asyncio.run(serve(settings))
    except CagError as e:  # a model, key or layout that cannot be loaded: said in one line
        log.error("cannot start the fallback: %s", e)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
