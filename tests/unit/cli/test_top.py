"""`cag top`'s view model and renderer: constructed Stats and events in, exact rows and cells out; its sources of
replicas; its refusals."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

from cag.cli.main import main
from cag.cli.platform_runner import PlatformPlan, ServicePlan
from cag.cli.top.model import (
    MAX_DETAIL_CHARS,
    EventRing,
    RecentEvent,
    ReplicaTarget,
    TopSnapshot,
    compile_job,
    recent_event,
    replica_down,
    replica_view,
)
from cag.cli.top.render import REPLICA_COLUMNS, compile_row, event_row, frame, replica_row, size, snapshot_json
from cag.cli.top.sources import AddressSource, PlanSource
from cag.events.schemas import (
    CompileFailedV1,
    Envelope,
    ModuleExpiredV1,
    ModuleInvalidatedV1,
    ModulePublishedV1,
    RoutesUpdatedV1,
)
from cag.infra.ports import free_port
from cag.v1 import cachepool_pb2, common_pb2, compiler_pb2

MIB = 1 << 20
POOL = ReplicaTarget(name="cachepool", address="127.0.0.1:50052")
AT = datetime(2026, 3, 2, 9, 30, 5, tzinfo=UTC)


def stats() -> cachepool_pb2.StatsResponse:
    return cachepool_pb2.StatsResponse(
        tiers=[
            cachepool_pb2.TierStats(
                tier=common_pb2.TIER_ENGINE, modules=2, bytes=3 * MIB // 2, capacity_bytes=8 * MIB, hits=5, misses=4
            ),
            cachepool_pb2.TierStats(tier=common_pb2.TIER_HOST_RAM, modules=1, bytes=512, hits=1, misses=3),
            cachepool_pb2.TierStats(tier=common_pb2.TIER_LOCAL_DISK, modules=3, bytes=5 * MIB, hits=2, misses=1),
            cachepool_pb2.TierStats(tier=common_pb2.TIER_ORIGIN, hits=1),
        ],
        queued=2,
        running=1,
        invalidations=3,
        ttft_p50_ms=12.34,
        ttft_p99_ms=250.0,
        ttft_samples=9,
        ttft_window_s=300.0,
        replica_id="pool-a",
    )


def body(payload: object, at: datetime = AT) -> bytes:
    envelope = Envelope.wrap(payload)  # type: ignore[arg-type]
    return envelope.model_copy(update={"occurred_at": at}).model_dump_json().encode()


def module_event(cls: type[ModulePublishedV1 | ModuleInvalidatedV1 | ModuleExpiredV1], **fields: object) -> bytes:
    base: dict[str, object] = {"module_id": "acme-billing-v2", "tenant_id": "acme", "route": "billing", "version": 2}
    return body(cls(**{**base, **fields}))


def test_a_replicas_stats_become_its_view_hits_from_every_cache_tier_misses_from_the_origin() -> None:
    view = replica_view(POOL, stats())
    assert view.up and view.replica_id == "pool-a"
    assert [(t.tier, t.modules, t.bytes, t.hits, t.misses) for t in view.tiers] == [
        ("engine", 2, 3 * MIB // 2, 5, 4),
        ("host_ram", 1, 512, 1, 3),
        ("local_disk", 3, 5 * MIB, 2, 1),
    ]
    assert (view.hits, view.misses) == (8, 1)


def test_an_answering_replica_is_one_row_with_every_cell() -> None:
    row = replica_row(replica_view(POOL, stats()))
    assert dict(zip(REPLICA_COLUMNS, row, strict=True)) == {
        "replica": "pool-a",
        "address": "127.0.0.1:50052",
        "state": "up",
        "engine": "2 · 1.5 MiB",
        "host_ram": "1 · 512 B",
        "local_disk": "3 · 5.0 MiB",
        "hits": "8",
        "misses": "1",
        "queued": "2",
        "running": "1",
        "TTFT p50": "12.3 ms",
        "TTFT p99": "250.0 ms",
        "invalidations": "3",
        "note": "TTFT over 9 request(s)",
    }


def test_a_replica_without_recent_requests_shows_no_ttft() -> None:
    quiet = stats()
    quiet.ClearField("ttft_p50_ms")
    quiet.ClearField("ttft_p99_ms")
    quiet.ClearField("ttft_samples")
    cells = dict(zip(REPLICA_COLUMNS, replica_row(replica_view(POOL, quiet)), strict=True))
    assert (cells["TTFT p50"], cells["TTFT p99"], cells["note"]) == ("-", "-", "")


def test_a_replica_that_did_not_answer_is_a_down_row_with_the_reason() -> None:
    row = replica_row(replica_down(POOL, "UNAVAILABLE: connection refused"))
    cells = dict(zip(REPLICA_COLUMNS, row, strict=True))
    assert (cells["replica"], cells["address"], cells["state"]) == ("cachepool", "127.0.0.1:50052", "down")
    assert cells["note"] == "UNAVAILABLE: connection refused"
    assert {cells[c] for c in REPLICA_COLUMNS[3:-1]} == {"-"}


def test_module_and_compile_events_become_lines_others_are_not_shown() -> None:
    published = recent_event(module_event(ModulePublishedV1, state="published"))
    invalidated = recent_event(module_event(ModuleInvalidatedV1, state="stale", reason="source changed"))
    expired = recent_event(module_event(ModuleExpiredV1, state="expired", version=None))
    failed = recent_event(body(CompileFailedV1(module_id="acme-billing-v2", tenant_id="acme", route="billing",
                                               job_id="job-7", reason="golden test failed")))  # fmt: skip
    assert published == RecentEvent(at=AT, kind="published", module_id="acme-billing-v2",
                                    detail="acme/billing v2 published")  # fmt: skip
    assert invalidated is not None and event_row(invalidated) == (
        "09:30:05", "invalidated", "acme-billing-v2", "acme/billing v2 stale (source changed)"
    )  # fmt: skip
    assert expired is not None and expired.detail == "acme/billing expired"
    assert failed is not None and event_row(failed) == (
        "09:30:05", "compile failed", "acme-billing-v2", "acme/billing job job-7: golden test failed"
    )  # fmt: skip
    assert recent_event(body(RoutesUpdatedV1(tenant_id="acme", version=3))) is None
    assert recent_event(b"not json") is None
    unknown = Envelope(subject="cag.module.published", version=9, data={}).model_dump_json().encode()
    assert recent_event(unknown) is None


def test_a_multi_line_or_long_reason_is_shown_on_one_bounded_line() -> None:
    reason = "compile failed: <AioRpcError\n    status = FAILED_PRECONDITION\n    details = stale\n>"
    failed = recent_event(body(CompileFailedV1(module_id="m", tenant_id="acme", route="billing", job_id="j",
                                               reason=reason)))  # fmt: skip
    assert failed is not None
    assert (
        failed.detail
        == "acme/billing job j: compile failed: <AioRpcError status = FAILED_PRECONDITION details = stale >"
    )
    long = recent_event(module_event(ModuleInvalidatedV1, state="stale", reason="x" * 1000))
    assert long is not None and len(long.detail) == MAX_DETAIL_CHARS and long.detail.endswith("…")
    assert replica_down(POOL, "a\nb").error == "a b"


def test_event_times_are_shown_in_utc() -> None:
    paris = AT.astimezone(timezone(timedelta(hours=1)))
    event = recent_event(module_event(ModulePublishedV1, state="published"))
    assert event is not None
    assert event_row(RecentEvent(at=paris, kind=event.kind, module_id="m", detail=""))[0] == "09:30:05"


def test_the_event_ring_keeps_the_latest_newest_first() -> None:
    ring = EventRing(2)
    events = [RecentEvent(at=AT, kind="published", module_id=f"m{i}", detail="") for i in range(3)]
    ring.add(events)
    assert [e.module_id for e in ring.newest_first()] == ["m2", "m1"]


def rendered(snapshot: TopSnapshot) -> str:
    console = Console(width=200, record=True)
    console.print(frame(snapshot))
    return console.export_text()


def test_a_frame_shows_the_replicas_and_the_recent_events() -> None:
    event = recent_event(module_event(ModuleInvalidatedV1, state="invalidated", reason="layout changed"))
    assert event is not None
    snapshot = TopSnapshot(
        taken_at=AT,
        replicas=(replica_view(POOL, stats()), replica_down(ReplicaTarget(name="b", address="10.0.0.2:1"), "gone")),
        events=(event,),
    )
    text = rendered(snapshot)
    assert "cag top · 2026-03-02 09:30:05 UTC · 1/2 replicas up" in text
    lines = text.splitlines()
    [up] = [line for line in lines if "pool-a" in line]
    assert [cell.strip() for cell in up.strip("│ ").split("│")] == list(replica_row(snapshot.replicas[0]))
    [down] = [line for line in lines if "10.0.0.2:1" in line]
    assert "down" in down and "gone" in down
    [line] = [line for line in lines if "acme-billing-v2" in line]
    assert "09:30:05" in line and "invalidated" in line and "acme/billing v2 invalidated (layout changed)" in line


def test_a_frame_says_why_events_are_missing() -> None:
    snapshot = TopSnapshot(taken_at=AT, replicas=(), events=(), events_error="nats://monitor:***@h:4222: refused")
    assert "events unavailable: nats://monitor:***@h:4222: refused" in rendered(snapshot)
    assert "none yet" in rendered(TopSnapshot(taken_at=AT, replicas=(), events=()))


def test_the_json_snapshot_has_every_field_and_the_derived_ones() -> None:
    event = RecentEvent(at=AT, kind="published", module_id="m", detail="d")
    snapshot = TopSnapshot(taken_at=AT, replicas=(replica_view(POOL, stats()), replica_down(POOL, "x")),
                           events=(event,))  # fmt: skip
    data = json.loads(json.dumps(snapshot_json(snapshot)))
    up, down = data["replicas"]
    assert (up["up"], up["hits"], up["misses"], up["replica_id"], up["ttft_p99_ms"]) == (True, 8, 1, "pool-a", 250.0)
    assert up["target"] == {"name": "cachepool", "address": "127.0.0.1:50052"}
    assert up["tiers"][0] == {"tier": "engine", "modules": 2, "bytes": 3 * MIB // 2, "capacity_bytes": 8 * MIB,
                              "hits": 5, "misses": 4}  # fmt: skip
    assert (down["up"], down["error"]) == (False, "x")
    assert data["events"] == [{"at": "2026-03-02T09:30:05+00:00", "kind": "published", "module_id": "m",
                               "detail": "d"}]  # fmt: skip
    assert data["taken_at"] == "2026-03-02T09:30:05+00:00" and data["events_error"] == ""


@pytest.mark.parametrize(
    ("nbytes", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (3 * MIB // 2, "1.5 MiB"), (5 << 40, "5.0 TiB")],
)
def test_sizes_are_shown_in_binary_units(nbytes: int, shown: str) -> None:
    assert size(nbytes) == shown


async def test_explicit_addresses_are_watched_once_each_in_order() -> None:
    source = AddressSource(["b:1", "a:2", "b:1"])
    assert [t.address for t in await source.targets()] == ["b:1", "a:2"]


async def test_the_platform_plan_gives_its_cache_pools_and_nothing_else(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    source = PlanSource(plan_file)
    assert await source.targets() == []  # the platform is not running
    plan = PlatformPlan(
        services=[
            ServicePlan(name=name, address=address, command=f"python -m cag.{name}", env={setting: address})
            for name, address, setting in [
                ("registry", "127.0.0.1:50051", "CAG_REGISTRY_ADDRESS"),
                ("cachepool", "127.0.0.1:50052", "CAG_CACHEPOOL_ADDRESS"),
                ("router", "127.0.0.1:50053", "CAG_ROUTER_CACHEPOOL_ADDRESS"),
            ]
        ]
    )
    plan_file.write_text(plan.to_json())
    assert await source.targets() == [ReplicaTarget(name="cachepool", address="127.0.0.1:50052")]


def test_top_without_a_pool_or_a_platform_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAG_HOME", str(tmp_path))  # no platform started here
    monkeypatch.setenv("CAG_TOKEN", "unused")
    no_nats = f"nats://127.0.0.1:{free_port()}"  # no announcements either
    assert main(["top", "--once", "--nats", no_nats, "--timeout", "0.5"]) == 2
    error = capsys.readouterr().err
    assert "no cache pool to watch" in error and "--pool HOST:PORT" in error and "replica announcements at" in error


@pytest.mark.parametrize(
    "option",
    [["--interval", "0"], ["--events", "0"], ["--since", "-1"], ["--timeout", "0"], ["--pool", ""], ["--pool", "a b:1"],
     ["--pool", "host"], ["--compiler", "host:port"]],
)  # fmt: skip
def test_top_refuses_options_out_of_range(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--pool", "127.0.0.1:1", "--once", *option]) == 2
    assert option[0] in capsys.readouterr().err


def job(state: int, **fields: object) -> compiler_pb2.Job:
    message = compiler_pb2.Job(job_id="job-1", state=state, tenant_id="acme", route="billing", trigger="request")
    message.queued_at.FromDatetime(AT)
    for name, value in fields.items():
        if name in ("started_at", "finished_at"):
            getattr(message, name).FromDatetime(value)
        elif name == "route":
            message.route = str(value)
        else:
            getattr(message, name).CopyFrom(value)
    return message


def test_the_compilers_jobs_become_rows_with_their_outcome() -> None:
    done = compile_job(job(compiler_pb2.JOB_STATE_SUCCEEDED, started_at=AT, finished_at=AT + timedelta(seconds=2.5),
                           module=common_pb2.Module(module_id="acme-billing-v2")))  # fmt: skip
    assert compile_row(done) == ("09:30:05", "succeeded", "acme/billing", "acme-billing-v2", "2.5 s", "request")
    failed = compile_job(job(compiler_pb2.JOB_STATE_FAILED, started_at=AT, finished_at=AT,
                             error=compiler_pb2.JobError(code="FAILED_PRECONDITION", message="golden failed")))  # fmt: skip
    assert compile_row(failed) == (
        "09:30:05", "failed", "acme/billing", "-", "0.0 s", "FAILED_PRECONDITION: golden failed"
    )  # fmt: skip
    queued = compile_job(job(compiler_pb2.JOB_STATE_QUEUED, route=""))
    assert (queued.state, queued.took_s, compile_row(queued)[2], compile_row(queued)[4]) == (
        "queued",
        None,
        "acme",
        "-",
    )


def test_the_compiles_panel_shows_when_a_compiler_is_known() -> None:
    jobs = (compile_job(job(compiler_pb2.JOB_STATE_RUNNING, started_at=AT)),)
    without = rendered(TopSnapshot(taken_at=AT, replicas=(), events=(), compiles=jobs))
    assert "recent compiles" not in without
    text = rendered(TopSnapshot(taken_at=AT, replicas=(), events=(), compiler="127.0.0.1:50054", compiles=jobs))
    assert "recent compiles (127.0.0.1:50054)" in text
    [line] = [line for line in text.splitlines() if "acme/billing" in line]
    assert "running" in line and "request" in line
    down = TopSnapshot(taken_at=AT, replicas=(), events=(), compiler="c:1", compiles_error="c:1: UNAVAILABLE: x")
    assert "compiles unavailable: c:1: UNAVAILABLE: x" in rendered(down)
    data = snapshot_json(TopSnapshot(taken_at=AT, replicas=(), events=(), compiler="c:1", compiles=jobs))
    assert data["compiler"] == "c:1"
    assert data["compiles"][0] | {"queued_at": ""} == {
        "job_id": "job-1", "state": "running", "queued_at": "", "tenant_id": "acme", "route": "billing",
        "trigger": "request", "module_id": "", "took_s": None, "error": "",
    }  # fmt: skip
    assert data["compiles"][0]["queued_at"] == "2026-03-02T09:30:05+00:00"


def test_the_live_view_refreshes_on_a_terminal_until_interrupted(tmp_path: Path) -> None:
    """On a terminal, frames follow each other until Ctrl-C, which ends the view with status 0."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "CAG_HOME": str(tmp_path), "CAG_TOKEN": "unused", "COLUMNS": "200", "LINES": "50"}
    argv = ["top", "--pool", f"127.0.0.1:{free_port()}", "--nats", f"nats://127.0.0.1:{free_port()}",
            "--timeout", "0.5", "--interval", "0.1"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "cag.cli.main", *argv], stdin=terminal, stdout=terminal,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    os.close(terminal)
    shown = b""
    try:
        while shown.count(b"cache-pool replicas") < 2:  # two frames: it refreshes
            readable, _, _ = select.select([controller], [], [], 30)
            assert readable, f"no new frame within 30 s: {shown!r}"
            chunk = os.read(controller, 65536)
            assert chunk, f"the view ended before two frames: {shown!r}"
            shown += chunk
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(controller)
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
