"""`python -m cag.fallback`: the fallback service, configured from the environment (CAG_FALLBACK_*, CAG_*).

The engine runtime is tuned before the service's modules load (cag.service_process): they import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from cag.fallback.settings import FallbackSettings
from cag.service_process import service_main


def load_serve() -> Callable[[FallbackSettings], Coroutine[Any, Any, None]]:
    from cag.fallback.app import serve  # only now: it loads torch (the embedding model), which must see the tuning

    return serve


def main() -> int:
    return service_main("fallback", FallbackSettings, load_serve, engine_threads=lambda s: s.num_threads)


if __name__ == "__main__":
    raise SystemExit(main())
