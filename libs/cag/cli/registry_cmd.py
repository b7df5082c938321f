"""`cag registry serve`: run the registry service in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from cag.settings import CagSettings


def register(sub: Any) -> None:
    p = sub.add_parser("registry", help="the registry service")
    which = p.add_subparsers(dest="registry_command", required=True)
    serve = which.add_parser("serve", help="serve the registry (needs CAG_DATABASE_URL and CAG_NATS_URL)")
    serve.add_argument("--address", help="host:port to listen on (default from CAG_REGISTRY_ADDRESS)")
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace, settings: CagSettings) -> int:
    from cag.registry.app import serve
    from cag.registry.settings import RegistrySettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {"address": args.address} if args.address else {}
    registry_settings = RegistrySettings(**overrides)  # the rest comes from the environment
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(registry_settings))
    return 0
