"""RegistryFollower against a real registry: backlog, caught-up signal, live changes, resume after a restart."""

from __future__ import annotations

import asyncio

from cag.auth.caller import ALL_TENANTS, Scope
from cag.registry.core import RegistryCore
from cag.registry.db.store import PostgresStore
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.watch import RegistryFollower
from cag.v1 import common_pb2, registry_pb2
from tests.registry_population import make_metadata
from tests.registry_server import RegistryServer, serve_registry


class Recorder:
    def __init__(self) -> None:
        self.changes: list[registry_pb2.ModuleChange] = []
        self.caught_up = asyncio.Event()
        self.changed = asyncio.Condition()

    async def on_change(self, change: registry_pb2.ModuleChange) -> None:
        async with self.changed:
            self.changes.append(change)
            self.changed.notify_all()

    async def on_caught_up(self) -> None:
        self.caught_up.set()

    async def wait_for(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.changes) >= count), 10)


def reader_client(server: RegistryServer) -> AsyncRegistryClient:
    return AsyncRegistryClient(server.address, token=server.token("service:cachepool", [Scope.READ], [ALL_TENANTS]))


async def test_backlog_then_live_changes_in_order(server: RegistryServer) -> None:
    admin = server.admin()
    await admin.register(make_metadata("m-one", tenant_id="acme", route="billing"))
    await admin.publish("m-one")
    recorder = Recorder()
    async with reader_client(server) as client:
        follower = RegistryFollower(client, recorder.on_change, on_caught_up=recorder.on_caught_up)
        task = asyncio.create_task(follower.run())
        try:
            await asyncio.wait_for(recorder.caught_up.wait(), 10)
            backlog = len(recorder.changes)
            assert [c.state for c in recorder.changes][-1] == common_pb2.MODULE_STATE_PUBLISHED
            await admin.register(make_metadata("m-two", tenant_id="acme", route="shipping"))
            await admin.publish("m-two")
            await recorder.wait_for(backlog + 1)  # registering is not a state change; publishing is
        finally:
            task.cancel()
    sequences = [c.sequence for c in recorder.changes]
    assert sequences == sorted(set(sequences))
    assert follower.last_sequence == sequences[-1]
    assert recorder.changes[-1].module_id == "m-two"


async def test_resumes_after_the_registry_restarts_without_gaps_or_repeats(store: PostgresStore) -> None:
    recorder = Recorder()
    async with serve_registry(RegistryCore(store)) as first:
        admin = first.admin()
        await admin.register(make_metadata("m-one", tenant_id="acme", route="billing"))
        await admin.publish("m-one")
        client = reader_client(first)
        follower = RegistryFollower(client, recorder.on_change, retry_initial_s=0.05, retry_max_s=0.1)
        task = asyncio.create_task(follower.run())
        await recorder.wait_for(1)
    # The registry is down: the follower keeps what it applied and retries until it is back at its address.
    async with serve_registry(RegistryCore(store), address=first.address, key=first.key) as second:
        trigger = registry_pb2.InvalidateRequest(module=registry_pb2.ModuleTrigger(module_id="m-one"), reason="test")
        await second.admin().stub.Invalidate(trigger)
        await recorder.wait_for(2)
        task.cancel()
    await client.close()
    assert [(c.module_id, c.state) for c in recorder.changes] == [
        ("m-one", common_pb2.MODULE_STATE_PUBLISHED),
        ("m-one", common_pb2.MODULE_STATE_INVALIDATED),
    ]
    assert recorder.changes[0].sequence < recorder.changes[1].sequence == follower.last_sequence
