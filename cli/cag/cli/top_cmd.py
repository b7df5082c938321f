"""`cag top`: a live view of the cache-pool replicas (modules and bytes per tier, hits and misses, queue, TTFT
percentiles) from their Stats, and of the platform's recent publishes, invalidations and compile failures from
the event stream. `--once` prints one frame, `--json` one snapshot, and both exit."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.live import Live

from cag.auth.credentials import resolve_token
from cag.cli.invalidate_cmd import identity_nats_url
from cag.cli.platform_runner import PLAN_FILE, PLATFORM_DIR
from cag.cli.top.events import EventFeed
from cag.cli.top.model import EventRing, TopSnapshot
from cag.cli.top.poll import poll_replicas
from cag.cli.top.render import frame, snapshot_json
from cag.cli.top.sources import AddressSource, PlanSource, ReplicaSource
from cag.errors import InvalidInputError
from cag.infra.nats_auth import MONITOR
from cag.settings import CagSettings

# The widest a one-shot frame gets: every column of the table readable in a log or a pipe.
ONCE_WIDTH = 200


def register(sub: Any) -> None:
    p = sub.add_parser("top", help="live view of the cache-pool replicas and the recent module and compile events")
    p.add_argument("--pool", action="append", default=[], metavar="HOST:PORT",
                   help="a replica to watch (repeatable; default: those `cag platform up` started)")  # fmt: skip
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    p.add_argument("--events", type=int, default=12, help="recent events shown (default 12)")
    p.add_argument("--since", type=float, default=15.0, help="minutes of past events shown at start (default 15)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds each replica has to answer (default 2)")
    p.add_argument("--nats", help="NATS URL for the events (default CAG_NATS_URL, else `cag infra up`'s monitor)")
    p.set_defaults(run=run_top)


def run_top(args: argparse.Namespace, settings: CagSettings) -> int:
    _check(args)
    source = replica_source(args.pool, settings)
    token = resolve_token(settings)
    nats_url = identity_nats_url(args.nats, settings, MONITOR)
    try:
        return asyncio.run(_top(args, source, token, nats_url))
    except KeyboardInterrupt:  # how a live view is left
        return 0


def _check(args: argparse.Namespace) -> None:
    for option, value, low in (("--interval", args.interval, 0.1), ("--timeout", args.timeout, 0.1),
                               ("--events", args.events, 1), ("--since", args.since, 0)):  # fmt: skip
        if not value >= low:
            raise InvalidInputError(f"{option} must be at least {low}, not {value}")


def replica_source(addresses: list[str], settings: CagSettings) -> ReplicaSource:
    """The replicas named with --pool, else those of the platform started in this run directory."""
    if addresses:
        return AddressSource(addresses)
    plan_file = settings.run_dir / PLATFORM_DIR / PLAN_FILE
    if not plan_file.exists():
        raise InvalidInputError(
            f"no cache pool to watch: name one with --pool HOST:PORT, or start the platform (`cag platform up`; "
            f"{plan_file} is not there)"
        )
    return PlanSource(plan_file)


async def _top(args: argparse.Namespace, source: ReplicaSource, token: str, nats_url: str) -> int:
    ring = EventRing(args.events)
    feed = EventFeed(nats_url, ring, since=datetime.now(UTC) - timedelta(minutes=args.since))
    await feed.start()
    try:
        if args.once or args.json:
            await feed.caught_up(args.timeout)
            snapshot = await take_snapshot(source, feed, token=token, timeout_s=args.timeout)
            if args.json:
                print(json.dumps(snapshot_json(snapshot), indent=2))
            else:
                Console(width=ONCE_WIDTH).print(frame(snapshot))
            return 0
        with Live(auto_refresh=False) as live:
            while True:
                snapshot = await take_snapshot(source, feed, token=token, timeout_s=args.timeout)
                live.update(frame(snapshot), refresh=True)
                await asyncio.sleep(args.interval)
    finally:
        await feed.close()


async def take_snapshot(source: ReplicaSource, feed: EventFeed, *, token: str, timeout_s: float) -> TopSnapshot:
    replicas = await poll_replicas(await source.targets(), token=token, timeout_s=timeout_s)
    return TopSnapshot(
        taken_at=datetime.now(UTC), replicas=replicas, events=feed.ring.newest_first(), events_error=feed.error
    )
