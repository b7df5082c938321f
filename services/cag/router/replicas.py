"""The cache-pool replicas this router sends answers to: the directory of what each announced (fed by the replica
bucket's watcher, or one static replica when discovery is off), a gRPC client per replica address, and the order
to try them in for a chain (cag.router.core.replicas)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from cag.errors import UnavailableError
from cag.events.replica_bucket import Announced, ReplicaChange
from cag.router.core.replica_directory import ReplicaDirectory
from cag.router.core.replicas import ReplicaOrder, ReplicaPolicy, rank_replicas
from cag.rpc.clients import AsyncCachePoolClient

log = logging.getLogger(__name__)
# The id of the one replica a router without discovery knows (its configured cache-pool address).
STATIC_REPLICA = "static"


class ReplicaLostError(UnavailableError):
    """The replica streaming the answer went away after the first token: the answer is cut short, and the
    request may be sent again (another replica serves it)."""

    reason = "REPLICA_LOST"
    retry_after_s = 0.1


class NoReplicaError(UnavailableError):
    reason = "NO_REPLICA"
    retry_after_s = 1.0


class CachePoolReplicas:
    def __init__(
        self,
        directory: ReplicaDirectory,
        policy: ReplicaPolicy,
        connect: Callable[[str], AsyncCachePoolClient],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self._connect = connect
        self._clock = clock
        self._clients: dict[str, AsyncCachePoolClient] = {}  # by address: a replica that moved gets a new one

    def on_change(self, change: ReplicaChange) -> None:
        """A change of the replica bucket."""
        if isinstance(change, Announced):
            self.directory.announce(change.document, self._clock())
        else:
            log.info("cache-pool replica %s withdrawn", change.replica_id)
            self.directory.forget(change.replica_id)

    def order(self, chain: Sequence[str]) -> ReplicaOrder:
        """The healthy replicas to try for `chain`, best first; NoReplicaError when there is none."""
        order = rank_replicas(chain, self.directory.views(), self._clock(), self.policy)
        if not order.replica_ids:
            raise NoReplicaError("no cache-pool replica is available now (none announced itself, or every one failed)")
        return order

    def client(self, replica_id: str) -> AsyncCachePoolClient:
        address = self.directory.address_of(replica_id)
        if address is None:  # withdrawn between the order and the call
            raise NoReplicaError(f"cache-pool replica {replica_id} left before the request reached it")
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._connect(address)
        return client

    def failed(self, replica_id: str, why: str) -> None:
        log.warning("cache-pool replica %s failed (%s): not chosen until it announces again", replica_id, why)
        self.directory.mark_failed(replica_id)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
