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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cag.errors import InvalidInputError
from cag.settings import CagSettings

IDENTITY = "registry"
DATABASE_VARS = ("CAG_REGISTRY_DATABASE_URL", "CAG_DATABASE_URL")
NATS_VARS = ("CAG_REGISTRY_NATS_URL", "CAG_NATS_URL")
AUTH_KEY_VARS = ("CAG_REGISTRY_AUTH_KEY_FILE", "CAG_AUTH_KEY_FILE")


def register(sub: Any) -> None:
    p = sub.add_parser("registry", help="the registry service")
    which = p.add_subparsers(dest="registry_command", required=True)
    serve = which.add_parser(
        "serve", help="serve the registry (CAG_DATABASE_URL and CAG_NATS_URL, else the servers of `cag infra up`)"
    )
    serve.add_argument("--address", help="host:port to listen on (default from CAG_REGISTRY_ADDRESS)")
    serve.set_defaults(run=run_serve)


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    database_url: str
    nats_url: str
    auth_key_file: str | None = None  # None: the environment's, or the default of the settings


def _from_env(names: tuple[str, ...], environ: dict[str, str]) -> str | None:
    """The first of `names` set (non-empty) in `environ`; case-insensitive, as pydantic-settings reads it."""
    folded = {key.upper(): value for key, value in environ.items()}
    return next((folded[name] for name in names if folded.get(name)), None)


def resolve_endpoints(run_dir: Path, environ: dict[str, str]) -> Endpoints:
    """The registry's URLs: the environment's when set, else those `cag infra up` recorded in `run_dir`.

    `InvalidInputError` (one line: what to set) when neither gives both.
    """
    from cag.infra.stack import local_service_urls

    database_url = _from_env(DATABASE_VARS, environ)
    nats_url = _from_env(NATS_VARS, environ)
    auth_key_file = _from_env(AUTH_KEY_VARS, environ)
    # The state is read only when needed: a complete environment works whatever the run directory holds.
    recorded = local_service_urls(run_dir, IDENTITY) if database_url is None or nats_url is None else None
    if recorded is not None:
        database_url = database_url or recorded.database_url
        nats_url = nats_url or recorded.nats_url
        auth_key_file = auth_key_file or recorded.auth_key_file
    missing = [names[-1] for names, url in ((DATABASE_VARS, database_url), (NATS_VARS, nats_url)) if url is None]
    if database_url is None or nats_url is None:
        raise InvalidInputError(
            f"no {' or '.join(missing)} set and none recorded by `cag infra up` in {run_dir}: "
            f"set {' and '.join(missing)}, or start the embedded ones with `cag infra up`"
        )
    return Endpoints(database_url=database_url, nats_url=nats_url, auth_key_file=auth_key_file)


def run_serve(args: argparse.Namespace, settings: CagSettings) -> int:
    endpoints = resolve_endpoints(settings.run_dir, dict(os.environ))

    from pydantic import ValidationError

    from cag.registry.app import serve
    from cag.registry.settings import RegistrySettings

    overrides = {"address": args.address} if args.address else {}
    auth_key_file = Path(endpoints.auth_key_file) if endpoints.auth_key_file else settings.auth_key_file
    try:
        registry_settings = RegistrySettings(
            database_url=endpoints.database_url,
            nats_url=endpoints.nats_url,
            auth_key_file=auth_key_file or settings.run_dir / "auth.key",
            **overrides,
        )  # the rest comes from the environment
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise InvalidInputError(f"invalid registry settings: {problems}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(registry_settings))
    return 0
