"""`cag platform`: infra, local S3 endpoint, registry, two cache-pool replicas, router, compiler and fallback as separate
processes under one supervisor — up returns once every service is healthy and both replicas announce themselves,
down leaves no process behind."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from cag.cli.platform_runner import Platform, inherited_env
from cag.events.replica_bucket import connect
from cag.events.replicas import BUCKET
from cag.infra.processes import children_of, pid_alive, wait_until
from cag.models import TINY
from tests.infra_fixtures import reachable_tmp_dir


def tree(pid: int) -> list[int]:
    found, frontier = [pid], [pid]
    while frontier:
        children = children_of(frontier.pop())
        found += children
        frontier += children
    return found


async def announced_replicas(nats_url: str) -> set[str]:
    nc = await connect(nats_url)
    try:
        bucket = await nc.jetstream().key_value(BUCKET)
        return set(await bucket.keys())
    finally:
        await nc.close()


def test_up_serves_every_service_and_down_leaves_no_process(models_dir: Path) -> None:
    run_dir = reachable_tmp_dir("cag-platform-")
    platform = Platform(run_dir, models_dir.parent, model=TINY, base_env=inherited_env(), pool_replicas=2)
    try:
        plan = platform.up(timeout_s=240)
        assert plan.supervisor_pid is not None
        statuses = platform.status()
        assert [(s.name, s.serving) for s in statuses] == [
            ("s3", True),
            ("registry", True),
            ("cachepool", True),
            ("cachepool-2", True),
            ("router", True),
            ("compiler", True),
            ("fallback", True),
        ]
        assert plan.address_of("cachepool") != plan.address_of("cachepool-2")
        state = platform.infra.load_state()
        assert state is not None
        # Both replicas announce themselves (a replica announces once it serves: SERVING comes first).
        assert wait_until(lambda: asyncio.run(announced_replicas(state.nats_url)) == {"cachepool-1", "cachepool-2"}, 30)
        processes = tree(plan.supervisor_pid)
        assert len(processes) >= 8  # the supervisor and (at least) one process per service
        assert platform.up().supervisor_pid == plan.supervisor_pid  # up again: the same platform, still serving
    finally:
        platform.down(purge=True)
    assert not [pid for pid in processes if pid_alive(pid)]
    assert platform.status() == []
    assert not platform.infra.is_up()
    shutil.rmtree(run_dir, ignore_errors=True)
