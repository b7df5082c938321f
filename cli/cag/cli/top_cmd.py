"""`cag top`: a live view of the cache-pool replicas (modules and bytes per tier, hits and misses, queue, TTFT
percentiles) from their Stats, of the platform's recent publishes, invalidations and compile failures from the
event stream, and of the compiler's recent jobs. `--once` prints one frame, `--json` one snapshot, and both exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from cag.auth.credentials import resolve_token
from cag.cli.invalidate_cmd import identity_nats_url
from cag.cli.platform_runner import PLAN_FILE, PLATFORM_DIR, PlatformPlan
from cag.cli.top.announced import AnnouncedSource
from cag.cli.top.events import EventFeed
from cag.cli.top.jobs import poll_compiles
from cag.cli.top.model import CompileJob, EventRing, TopSnapshot
from cag.cli.top.poll import poll_replicas
from cag.cli.top.render import frame, snapshot_json
from cag.cli.top.sources import AddressSource, CombinedSource, PlanSource, ReplicaSource
from cag.errors import InvalidInputError
from cag.events.replicas import ADDRESS
from cag.infra.nats_auth import MONITOR
from cag.rpc.tls import ClientTls, client_tls
from cag.settings import CagSettings

# The widest a one-shot frame gets: every column of the table readable in a log or a pipe.
ONCE_WIDTH = 200
NO_REPLICA = (
    "name one with --pool HOST:PORT, start the platform (`cag platform up`), or check that the replicas announce "
    "themselves (CAG_CACHEPOOL_ANNOUNCE) on the NATS that --nats names"
)


def register(sub: Any) -> None:
    p = sub.add_parser("top", help="live view of the cache-pool replicas and the recent module and compile events")
    p.add_argument("--pool", action="append", default=[], metavar="HOST:PORT",
                   help="a replica to watch (repeatable; default: the announced ones and the platform's)")  # fmt: skip
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    p.add_argument("--events", type=int, default=12, help="recent events shown (default 12)")
    p.add_argument("--since", type=float, default=15.0, help="minutes of past events shown at start (default 15)")
    p.add_argument(
        "--timeout", type=float, default=2.0, help="seconds each replica and NATS have to answer (default 2)"
    )
    p.add_argument("--compiler", metavar="HOST:PORT", help="the compiler service (default: the platform's, if any)")
    p.add_argument("--nats", help="NATS URL for events and announcements (default CAG_NATS_URL, else `cag infra up`'s)")
    p.set_defaults(run=run_top)


def run_top(args: argparse.Namespace, settings: CagSettings) -> int:
    _check(args)
    token = resolve_token(settings)
    nats_url = identity_nats_url(args.nats, settings, MONITOR)
    plan_file = settings.run_dir / PLATFORM_DIR / PLAN_FILE
    try:
        return asyncio.run(_top(args, token, nats_url, plan_file, client_tls(settings)))
    except KeyboardInterrupt:  # how a live view is left
        return 0


def _check(args: argparse.Namespace) -> None:
    for option, value, low in (("--interval", args.interval, 0.1), ("--timeout", args.timeout, 0.1),
                               ("--events", args.events, 1), ("--since", args.since, 0)):  # fmt: skip
        if not value >= low:
            raise InvalidInputError(f"{option} must be at least {low}, not {value}")
    addresses = [("--pool", a) for a in args.pool] + ([("--compiler", args.compiler)] if args.compiler else [])
    for option, address in addresses:
        if not re.fullmatch(ADDRESS, address):
            raise InvalidInputError(f"{option} {address[:80]!r} is not HOST:PORT")


async def _top(args: argparse.Namespace, token: str, nats_url: str, plan_file: Path, tls: ClientTls | None) -> int:
    """Replicas named with --pool, else those announcing themselves and those of the platform started here."""
    feed = EventFeed(nats_url, EventRing(args.events), since=datetime.now(UTC) - timedelta(minutes=args.since),
                     timeout_s=args.timeout)  # fmt: skip
    announced = None if args.pool else AnnouncedSource(nats_url, timeout_s=args.timeout)
    source = AddressSource(args.pool) if announced is None else CombinedSource([announced, PlanSource(plan_file)])
    await asyncio.gather(feed.start(), *([announced.start()] if announced else []))
    compiler = args.compiler or _platform_compiler(plan_file)
    view = TopView(
        source, feed, announced, compiler, token=token, timeout_s=args.timeout, jobs=min(args.events, 500), tls=tls
    )
    try:
        if args.once or args.json:
            await feed.caught_up(args.timeout)
            snapshot = await view.snapshot()
            if not snapshot.replicas:
                why = f" ({snapshot.replicas_error})" if snapshot.replicas_error else ""
                raise InvalidInputError(f"no cache pool to watch: {NO_REPLICA}{why}")
            if args.json:
                print(json.dumps(snapshot_json(snapshot), indent=2))
            else:
                Console(width=ONCE_WIDTH).print(frame(snapshot))
            return 0
        with Live(auto_refresh=False) as live:
            while True:
                live.update(frame(await view.snapshot()), refresh=True)
                await asyncio.sleep(args.interval)
    finally:
        await feed.close()
        if announced is not None:
            await announced.close()


def _platform_compiler(plan_file: Path) -> str:
    """The compiler service of the platform started here; "" when there is none."""
    try:
        plan = PlatformPlan.from_json(plan_file.read_text())
    except FileNotFoundError:
        return ""
    return next((s.address for s in plan.services if s.name == "compiler"), "")


class TopView:
    """What one refresh reads: every replica's Stats, the event feed's ring, the compiler's recent jobs, and why
    anything is missing."""

    def __init__(
        self,
        source: ReplicaSource,
        feed: EventFeed,
        announced: AnnouncedSource | None,
        compiler: str,
        *,
        token: str,
        timeout_s: float,
        jobs: int,
        tls: ClientTls | None = None,
    ) -> None:
        self.source = source
        self.feed = feed
        self.announced = announced
        self.compiler = compiler  # "" when none is known
        self.token = token
        self.timeout_s = timeout_s
        self.jobs = jobs
        self.tls = tls

    async def snapshot(self) -> TopSnapshot:
        replicas, (compiles, compiles_error) = await asyncio.gather(
            poll_replicas(await self.source.targets(), token=self.token, timeout_s=self.timeout_s, tls=self.tls),
            self._compiles(),
        )
        return TopSnapshot(
            taken_at=datetime.now(UTC),
            replicas=replicas,
            replicas_error=self.announced.error if self.announced is not None else "",
            events=self.feed.ring.newest_first(),
            events_error=self.feed.error,
            compiler=self.compiler,
            compiles=compiles,
            compiles_error=compiles_error,
        )

    async def _compiles(self) -> tuple[tuple[CompileJob, ...], str]:
        if not self.compiler:
            return (), ""
        return await poll_compiles(
            self.compiler, token=self.token, limit=self.jobs, timeout_s=self.timeout_s, tls=self.tls
        )
