"""Each replica's Stats, asked of all at once; a replica that does not answer is shown down with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from cag.cli.top.model import ReplicaTarget, ReplicaView, replica_down, replica_view
from cag.rpc.clients import AsyncCachePoolClient
from cag.rpc.tls import ClientTls


async def poll_replicas(
    targets: Sequence[ReplicaTarget], *, token: str, timeout_s: float, tls: ClientTls | None = None
) -> tuple[ReplicaView, ...]:
    """Every target's view, in the targets' order."""
    polls = (poll_replica(t, token=token, timeout_s=timeout_s, tls=tls) for t in targets)
    return tuple(await asyncio.gather(*polls))


async def poll_replica(
    target: ReplicaTarget, *, token: str, timeout_s: float, tls: ClientTls | None = None
) -> ReplicaView:
    try:
        async with AsyncCachePoolClient(target.address, token=token, timeout_s=timeout_s, tls=tls) as client:
            return replica_view(target, await client.stats())
    except grpc.aio.AioRpcError as e:
        return replica_down(target, f"{e.code().name}: {e.details()}")
