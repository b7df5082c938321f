"""Where the cache-pool replicas are: a source answers the replicas to watch now (asked again at every refresh, so
a source that follows the platform sees replicas come and go)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cag.cli.platform_runner import PlatformPlan
from cag.cli.top.model import ReplicaTarget

# Every cache-pool process the platform plans has its listening address in its environment under this name.
POOL_ADDRESS_SETTING = "CAG_CACHEPOOL_ADDRESS"


class ReplicaSource(Protocol):
    async def targets(self) -> list[ReplicaTarget]:
        """The replicas to watch now, in a stable order."""
        ...


class AddressSource:
    """Replicas named on the command line (--pool host:port), each known by its address."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self._targets = [ReplicaTarget(name=a, address=a) for a in dict.fromkeys(addresses)]

    async def targets(self) -> list[ReplicaTarget]:
        return list(self._targets)


class PlanSource:
    """The cache pools of the platform `cag platform up` started (its plan file): none while it is not running."""

    def __init__(self, plan_file: Path) -> None:
        self.plan_file = plan_file

    async def targets(self) -> list[ReplicaTarget]:
        try:
            plan = PlatformPlan.from_json(self.plan_file.read_text())
        except FileNotFoundError:
            return []
        return [ReplicaTarget(name=s.name, address=s.address) for s in plan.services if POOL_ADDRESS_SETTING in s.env]


class CombinedSource:
    """Every replica of several sources, each address once (the first source naming it wins)."""

    def __init__(self, sources: Sequence[ReplicaSource]) -> None:
        self.sources = list(sources)

    async def targets(self) -> list[ReplicaTarget]:
        found: dict[str, ReplicaTarget] = {}
        for source in self.sources:
            for target in await source.targets():
                found.setdefault(target.address, target)
        return list(found.values())
