"""`cag top`'s frame with rich: a table with one row per replica, a panel of the recent events; and the same
snapshot as JSON."""

from __future__ import annotations

import dataclasses
from datetime import UTC
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cag.cli.top.model import CACHE_TIERS, CompileJob, RecentEvent, ReplicaView, TopSnapshot

REPLICA_COLUMNS = ("replica", "address", "state", *CACHE_TIERS.values(), "hits", "misses", "queued", "running",
                   "TTFT p50", "TTFT p99", "invalidations", "note")  # fmt: skip
NUMERIC = {*CACHE_TIERS.values(), "hits", "misses", "queued", "running", "TTFT p50", "TTFT p99", "invalidations"}
EVENT_COLUMNS = ("time", "event", "module", "detail")
COMPILE_COLUMNS = ("queued", "state", "tenant/route", "module", "took", "trigger or error")
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(nbytes: int) -> str:
    """Bytes in binary units: 512 B, 1.5 MiB."""
    value = float(nbytes)
    for unit in UNITS:
        if value < 1024 or unit == UNITS[-1]:
            return f"{nbytes} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _tier_cell(replica: ReplicaView, name: str) -> str:
    """Modules and bytes the replica holds in the tier: `2 · 1.5 MiB`."""
    use = replica.tier(name)
    return "-" if use is None else f"{use.modules} · {size(use.bytes)}"


def _ttft_cell(replica: ReplicaView, ms: float) -> str:
    return f"{ms:.1f} ms" if replica.ttft_samples else "-"


def replica_row(replica: ReplicaView) -> tuple[str, ...]:
    """The row's cells, in REPLICA_COLUMNS order."""
    if not replica.up:
        blanks = ("-",) * (len(REPLICA_COLUMNS) - 4)
        return (replica.target.name, replica.target.address, "down", *blanks, replica.error)
    return (
        replica.replica_id or replica.target.name,
        replica.target.address,
        "up",
        *(_tier_cell(replica, name) for name in CACHE_TIERS.values()),
        str(replica.hits),
        str(replica.misses),
        str(replica.queued),
        str(replica.running),
        _ttft_cell(replica, replica.ttft_p50_ms),
        _ttft_cell(replica, replica.ttft_p99_ms),
        str(replica.invalidations),
        f"TTFT over {replica.ttft_samples} request(s)" if replica.ttft_samples else "",
    )


def replicas_table(replicas: tuple[ReplicaView, ...], error: str = "") -> Table:
    table = Table(title="cache-pool replicas", title_justify="left", caption=error or None, caption_style="yellow")
    for column in REPLICA_COLUMNS:
        table.add_column(column, justify="right" if column in NUMERIC else "left", no_wrap=column != "note")
    for replica in replicas:
        table.add_row(*replica_row(replica), style=None if replica.up else "red")
    return table


def event_row(event: RecentEvent) -> tuple[str, str, str, str]:
    """The row's cells, in EVENT_COLUMNS order (the time in UTC)."""
    return (event.at.astimezone(UTC).strftime("%H:%M:%S"), event.kind, event.module_id, event.detail)


def events_panel(events: tuple[RecentEvent, ...], error: str) -> Panel:
    title = "recent publishes, invalidations and compile failures"
    if error:
        return Panel(Text(f"events unavailable: {error}", style="yellow"), title=title, title_align="left")
    if not events:
        return Panel(Text("none yet"), title=title, title_align="left")
    table = Table(show_edge=False, box=None)
    for column in EVENT_COLUMNS:
        table.add_column(column, no_wrap=column != "detail")
    for event in events:
        table.add_row(*event_row(event), style="red" if event.kind != "published" else None)
    return Panel(table, title=title, title_align="left")


def compile_row(job: CompileJob) -> tuple[str, str, str, str, str, str]:
    """The row's cells, in COMPILE_COLUMNS order (the time in UTC)."""
    took = "-" if job.took_s is None else f"{job.took_s:.1f} s"
    return (
        job.queued_at.astimezone(UTC).strftime("%H:%M:%S"),
        job.state,
        f"{job.tenant_id}/{job.route}" if job.route else job.tenant_id,  # "": derived from the source, later
        job.module_id or "-",
        took,
        job.error or job.trigger,
    )


def compiles_panel(compiler: str, jobs: tuple[CompileJob, ...], error: str) -> Panel:
    title = f"recent compiles ({compiler})"
    if error:
        return Panel(Text(f"compiles unavailable: {error}", style="yellow"), title=title, title_align="left")
    if not jobs:
        return Panel(Text("none yet"), title=title, title_align="left")
    table = Table(show_edge=False, box=None)
    for column in COMPILE_COLUMNS:
        table.add_column(column, no_wrap=column != "trigger or error")
    for job in jobs:
        table.add_row(*compile_row(job), style="red" if job.state == "failed" else None)
    return Panel(table, title=title, title_align="left")


def frame(snapshot: TopSnapshot) -> Group:
    """The whole screen for one snapshot."""
    up = sum(r.up for r in snapshot.replicas)
    header = Text(f"cag top · {snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC · {up}/{len(snapshot.replicas)} replicas up")
    parts: list[RenderableType] = [header, replicas_table(snapshot.replicas, snapshot.replicas_error)]
    parts.append(events_panel(snapshot.events, snapshot.events_error))
    if snapshot.compiler:
        parts.append(compiles_panel(snapshot.compiler, snapshot.compiles, snapshot.compiles_error))
    return Group(*parts)


def snapshot_json(snapshot: TopSnapshot) -> dict[str, Any]:
    """The snapshot as JSON-ready data: every field, each replica's derived `up`, `hits` and `misses` too."""
    replicas = [{**dataclasses.asdict(r), "up": r.up, "hits": r.hits, "misses": r.misses} for r in snapshot.replicas]
    events = [{**dataclasses.asdict(e), "at": e.at.isoformat()} for e in snapshot.events]
    compiles = [{**dataclasses.asdict(j), "queued_at": j.queued_at.isoformat()} for j in snapshot.compiles]
    return {
        "taken_at": snapshot.taken_at.isoformat(),
        "replicas": replicas,
        "replicas_error": snapshot.replicas_error,
        "events": events,
        "events_error": snapshot.events_error,
        "compiler": snapshot.compiler,
        "compiles": compiles,
        "compiles_error": snapshot.compiles_error,
    }
