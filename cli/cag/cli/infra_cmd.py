"""`cag infra up|down|status`: embedded NATS (JetStream) and Postgres (pgvector) for development.

The servers require credentials, generated into the run directory (0600 files). Nothing printed
holds a secret: `up` prints `. RUN_DIR/admin.env` on stdout, a file of `export CAG_DATABASE_URL=...
CAG_NATS_URL=...` lines (the admin NATS identity), so `eval "$(cag infra up)"` still points a shell at
the servers; human-readable lines, with where each credential is kept, go to stderr.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from cag.infra.database import DatabaseUrls
from cag.infra.stack import InfraStack, InfraState
from cag.settings import CagSettings


def register(sub: Any) -> None:
    p = sub.add_parser("infra", help="run embedded NATS and Postgres for development")
    infra_sub = p.add_subparsers(dest="infra_command", required=True)

    up = infra_sub.add_parser("up", help="start both servers (idempotent) and print their URLs")
    _run_dir_arg(up)
    up.add_argument("--fast", action="store_true", help="no fsync (tests, throwaway data)")
    up.set_defaults(run=run_up)

    down = infra_sub.add_parser("down", help="stop both servers; data is kept unless --purge")
    _run_dir_arg(down)
    down.add_argument("--purge", action="store_true", help="also delete the servers' data")
    down.set_defaults(run=run_down)

    status = infra_sub.add_parser("status", help="report whether each server is up, with its URL")
    _run_dir_arg(status)
    status.set_defaults(run=run_status)


def _run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, default=None, help="default: $CAG_HOME/run")


def _stack(args: argparse.Namespace, settings: CagSettings) -> InfraStack:
    run_dir: Path = args.run_dir if args.run_dir is not None else settings.run_dir
    return InfraStack(run_dir)


def _print_urls(stack: InfraStack, state: InfraState) -> None:
    print(f"nats:     {state.nats.url} (users and passwords in {state.nats.credentials_file})", file=sys.stderr)
    database = DatabaseUrls(async_url=state.database_url, sync_url=state.sync_database_url)
    print(f"postgres: {database.redacted} (password in {state.postgres.password_file})", file=sys.stderr)
    print(f"service-token key: {state.auth_key_file}", file=sys.stderr)
    print(f"URLs with credentials: {stack.state_file}; admin exports: {stack.env_file}", file=sys.stderr)
    print(f". {shlex.quote(str(stack.env_file))}")


def run_up(args: argparse.Namespace, settings: CagSettings) -> int:
    stack = _stack(args, settings)
    state = stack.load_state()
    # A state without credentials is from servers an older cag started open to everyone: `up` refuses those.
    if state is not None and state.nats.urls and stack.is_up():
        print(f"already running in {stack.run_dir}", file=sys.stderr)
    else:
        started = time.perf_counter()
        state = stack.up(fast=args.fast)
        print(f"up in {time.perf_counter() - started:.2f}s ({stack.run_dir})", file=sys.stderr)
    _print_urls(stack, state)
    return 0


def run_down(args: argparse.Namespace, settings: CagSettings) -> int:
    stack = _stack(args, settings)
    had_state = stack.down(purge=args.purge)
    if not had_state:
        print(f"nothing recorded in {stack.run_dir}", file=sys.stderr)
    elif args.purge:
        print(f"stopped; data deleted from {stack.run_dir}", file=sys.stderr)
    else:
        print(f"stopped; data kept in {stack.run_dir} (--purge deletes it)", file=sys.stderr)
    return 0


def run_status(args: argparse.Namespace, settings: CagSettings) -> int:
    """Exit 0 when both servers are up, 1 otherwise."""
    statuses = _stack(args, settings).status()
    for s in statuses:
        state = "up" if s.up else "down"
        pid = f"pid {s.pid}" if s.pid is not None else "-"
        credentials = f"; credentials in {s.credentials}" if s.credentials else ""
        print(f"{s.name:<9} {state:<5} {s.url or '-'}  ({pid}; {s.detail or 'not started'}{credentials})")
    return 0 if all(s.up for s in statuses) else 1
