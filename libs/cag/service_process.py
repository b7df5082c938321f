"""How each service runs as a process (`python -m cag.<service>`, a container's command).

Settings come from the environment only; a bad one is said in one line and the process exits 2. A service
that hosts an engine has its runtime tuned before its modules load (they import torch, which reads its OpenMP
settings as it loads). The app then runs until SIGTERM or SIGINT and stops gracefully (the process exits 0),
its spans going where CAG_TRACES says (cag.telemetry).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from cag.engine_runtime import tune_engine_runtime
from cag.errors import CagError, validation_problems
from cag.telemetry import configure_tracing, shutdown_tracing

S = TypeVar("S")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServiceApp(Protocol):
    async def start(self) -> None:
        """Returns once the service serves."""

    async def stop(self) -> None:
        """Graceful and bounded."""


async def run_until_signalled(app: ServiceApp, name: str) -> None:
    """Start `app`, serve until SIGTERM or SIGINT, then stop it (also when starting failed)."""
    log = logging.getLogger(f"cag.{name}")
    configure_tracing(f"cag-{name}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        await app.start()
        await stop.wait()
        log.info("%s stopping: draining in-flight calls", name)
    finally:
        await app.stop()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    shutdown_tracing()
    log.info("%s stopped", name)


def service_main(
    name: str,
    read_settings: Callable[[], S],
    load_serve: Callable[[], Callable[[S], Coroutine[Any, Any, None]]],
    *,
    engine_threads: Callable[[S], int | None] | None = None,
) -> int:
    """The process: settings, then (for an engine host, `engine_threads` given) the runtime tuning, then
    `load_serve()` imports the service and its `serve(settings)` runs. Exit 2 for settings, keys, models or
    engines that cannot be loaded, said in one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger(f"cag.{name}")
    try:
        settings = read_settings()
    except ValidationError as e:
        log.error("cannot start the %s: %s", name, validation_problems(e, root="settings"))
        return 2
    except CagError as e:
        log.error("cannot start the %s: %s", name, e)
        return 2
    if engine_threads is not None:
        tune_engine_runtime(engine_threads(settings), os.environ)
    serve = load_serve()
    try:
        asyncio.run(serve(settings))
    except CagError as e:
        log.error("cannot start the %s: %s", name, e)
        return 2
    return 0
