"""`cag platform up|status|down`: the whole platform on this machine, each service its own process.

`up` starts the embedded infra (as `cag infra up`), then the registry, cache pool, router and compiler under one
supervisor, and returns once every service answers its health check, leaving them running; `--foreground`
stays attached and stops everything on Ctrl-C. `down` stops the services and the infra and leaves no
process behind. The services' output goes to `<run dir>/platform/platform.log`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from cag.cli.platform_runner import UP_TIMEOUT_S, Platform, inherited_env
from cag.models import SMOLLM2
from cag.settings import CagSettings


def register(sub: Any) -> None:
    p = sub.add_parser("platform", help="run registry, cache pool, router and compiler as local processes")
    which = p.add_subparsers(dest="platform_command", required=True)
    up = which.add_parser("up", help="start infra and every service; return once all are healthy")
    up.add_argument("--model", default=SMOLLM2, help=f"the model the cache pool serves (default {SMOLLM2})")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops everything")
    up.add_argument("--timeout", type=float, default=UP_TIMEOUT_S, help="seconds to wait for health")
    up.add_argument(
        "--pool-replicas", type=int, default=1, metavar="N",
        help="cache-pool processes (default 1); with more, each announces what it holds and the router routes "
        "each request to the replica holding its chain",
    )  # fmt: skip
    up.set_defaults(run=run_up)
    which.add_parser("status", help="whether each service answers its health check").set_defaults(run=run_status)
    which.add_parser("down", help="stop every service and the infra").set_defaults(run=run_down)


def platform(settings: CagSettings, model: str = SMOLLM2, pool_replicas: int = 1) -> Platform:
    return Platform(settings.run_dir, settings.home, model=model, base_env=inherited_env(), pool_replicas=pool_replicas)


def run_up(args: argparse.Namespace, settings: CagSettings) -> int:
    if args.pool_replicas < 1:
        print("--pool-replicas must be at least 1", file=sys.stderr)
        return 2
    runner = platform(settings, args.model, args.pool_replicas)
    plan = runner.up(timeout_s=args.timeout)
    for service in plan.services:
        print(f"{service.name:<11} {service.address}", file=sys.stderr)
    print(f"logs: {runner.log_file}", file=sys.stderr)
    print(f"export CAG_ROUTER_ADDRESS={plan.address_of('router')} CAG_REGISTRY_ADDRESS={plan.address_of('registry')}")
    if not args.foreground:
        return 0
    try:
        return _attach(runner)
    except KeyboardInterrupt:
        return 0
    finally:
        runner.down()


def _attach(runner: Platform) -> int:
    """Follow the log until the supervisor exits (Ctrl-C: `down` in the caller's finally)."""
    with runner.log_file.open() as log:
        log.seek(0, os.SEEK_END)
        while runner.is_up():
            line = log.readline()
            if line:
                sys.stdout.write(line)
            else:
                time.sleep(0.2)
    return 1  # a service exited on its own


def run_status(args: argparse.Namespace, settings: CagSettings) -> int:
    statuses = platform(settings).status()
    if not statuses:
        print("not running (cag platform up starts it)")
        return 1
    for s in statuses:
        print(f"{s.name:<11} {'serving' if s.serving else 'down':<8} {s.address}  {s.detail}")
    return 0 if all(s.serving for s in statuses) else 1


def run_down(args: argparse.Namespace, settings: CagSettings) -> int:
    stopped = platform(settings).down()
    print("stopped" if stopped else "nothing was running", file=sys.stderr)
    return 0
