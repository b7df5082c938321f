"""`cag registry serve`: run the registry service in the foreground.

The database and NATS URLs come from the environment (CAG_REGISTRY_DATABASE_URL / CAG_DATABASE_URL,
CAG_REGISTRY_NATS_URL / CAG_NATS_URL); whatever the environment leaves unset is taken from the servers
`cag infra up` recorded in the run directory, with the registry's own NATS identity. The same goes for
the service-token signing key (CAG_REGISTRY_AUTH_KEY_FILE / CAG_AUTH_KEY_FILE, else the recorded one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from cag.errors import InvalidInputError, validation_problems
from cag.settings import CagSettings, InfraSettings

IDENTITY = "registry"
DATABASE_VAR = "CAG_DATABASE_URL"  # or CAG_REGISTRY_DATABASE_URL (cag.registry.settings)
NATS_VAR = "CAG_NATS_URL"  # or CAG_REGISTRY_NATS_URL


def register(sub: Any) -> None:
    p = sub.add_parser("registry", help="the registry service")
    which = p.add_subparsers(dest="registry_command", required=True)
    serve = which.add_parser(
        "serve", help="serve the registry (CAG_DATABASE_URL and CAG_NATS_URL, else the servers of `cag infra up`)"
    )
    serve.add_argument("--address", help="host:port to listen on (default from CAG_REGISTRY_ADDRESS)")
    serve.set_defaults(run=run_serve)


def resolve_infra(run_dir: Path, given: InfraSettings) -> InfraSettings:
    """The registry's infra: what the environment gave, the rest from what `cag infra up` recorded in `run_dir`.

    `InvalidInputError` (one line: what to set) when neither gives the database and NATS URLs.
    """
    from cag.infra.stack import local_service_urls

    # The state is read only when needed: a complete environment works whatever the run directory holds.
    recorded = local_service_urls(run_dir, IDENTITY) if given.database_url is None or given.nats_url is None else None
    database_url = given.database_url or (recorded.database_url if recorded else None)
    nats_url = given.nats_url or (recorded.nats_url if recorded else None)
    recorded_key = recorded.auth_key_file if recorded and recorded.auth_key_file else None
    auth_key_file = given.auth_key_file or (Path(recorded_key) if recorded_key else run_dir / "auth.key")
    missing = [var for var, url in ((DATABASE_VAR, database_url), (NATS_VAR, nats_url)) if url is None]
    if missing:
        raise InvalidInputError(
            f"no {' or '.join(missing)} set and none recorded by `cag infra up` in {run_dir}: "
            f"set {' and '.join(missing)}, or start the embedded ones with `cag infra up`"
        )
    return InfraSettings(database_url=database_url, nats_url=nats_url, auth_key_file=auth_key_file)


def run_serve(args: argparse.Namespace, settings: CagSettings) -> int:
    from pydantic import ValidationError

    from cag.registry.app import serve
    from cag.registry.settings import RegistrySettings

    infra = resolve_infra(settings.run_dir, RegistrySettings.infra_from_env())
    overrides = {"address": args.address} if args.address else {}
    try:
        registry_settings = RegistrySettings(infra=infra, **overrides)  # the rest comes from the environment
    except ValidationError as e:
        raise InvalidInputError(f"invalid registry settings: {validation_problems(e, root='settings')}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(registry_settings))
    return 0
