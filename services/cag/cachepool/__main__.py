"""`python -m cag.cachepool`: the cache pool service, configured from the environment (CAG_CACHEPOOL_*, CAG_*).

The engine runtime is tuned before the service's modules load (cag.service_process): they import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from cag.cachepool.settings import CachePoolSettings
from cag.service_process import service_main


def load_serve() -> Callable[[CachePoolSettings], Coroutine[Any, Any, None]]:
    from cag.cachepool.app import serve  # only now: it loads torch, which must see the tuning

    return serve


def main() -> int:
    return service_main("cachepool", CachePoolSettings, load_serve, engine_threads=lambda s: s.num_threads)


if __name__ == "__main__":
    raise SystemExit(main())
