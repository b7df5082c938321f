"""Each replica's Stats, asked of all at once; a replica that does not answer is shown down with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from cag.cli.top.model import ReplicaTarget, ReplicaView, replica_down, replica_view
from cag.rpc.clients import AsyncCachePoolClient


async def poll_replicas(targets: Sequence[ReplicaTarget], *, token: str, timeout_s: float) -> tuple[ReplicaView, ...]:
    """Every target's view, in the targets' order."""
    return tuple(await asyncio.gather(*(poll_replica(t, token=token, timeout_s=timeout_s) for t in targets)))


async def poll_replica(target: ReplicaTarget, *, token: str, timeout_s: float) -> ReplicaView:
    try:
        async with AsyncCachePoolClient(target.address, token=token, timeout_s=timeout_s) as client:
            return replica_view(target, await client.stats())
    except grpc.aio.AioRpcError as e:
        return replica_down(target, f"{e.code().name}: {e.details()}")
