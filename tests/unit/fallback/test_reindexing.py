"""Answers wait for a tenant's source being reindexed, and only for that tenant's (or a public one), boundedly."""

from __future__ import annotations

import asyncio

from cag.fallback.reindexing import Reindexing


async def test_an_answer_waits_for_its_tenants_reindex_to_finish() -> None:
    reindexing = Reindexing()
    release = asyncio.Event()
    entered = asyncio.Event()

    async def reindex() -> None:
        async with reindexing.running("acme"):
            entered.set()
            await release.wait()

    task = asyncio.create_task(reindex())
    await entered.wait()
    waiting = asyncio.create_task(reindexing.settled(["acme", "public"], timeout_s=10))
    assert await reindexing.settled(["globex", "public"], timeout_s=10)  # another tenant does not wait
    assert not waiting.done()
    release.set()
    assert await waiting
    await task
    assert not reindexing.busy(["acme"])


async def test_the_wait_is_bounded() -> None:
    reindexing = Reindexing()
    async with reindexing.running("acme"):
        assert not await reindexing.settled(["acme"], timeout_s=0.01)
    assert await reindexing.settled(["acme"], timeout_s=0.01)
