"""`cag bench ttft | registry | e2e | pool | fairness | replicas | routing | cacheweaver | matrix`: the benchmarks
(see benchmarks/)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a benchmark and write its JSON")
    which = p.add_subparsers(dest="bench", required=True)
    from cag.bench import ttft

    ttft.register(which)
    from cag.bench import registry

    registry.register(which)
    from cag.bench import e2e

    e2e.register(which)
    from cag.bench import pool

    pool.register(which)
    from cag.bench import fairness

    fairness.register(which)
    from cag.bench import replicas

    replicas.register(which)
    from cag.bench import routing

    routing.register(which)
    from cag.bench import cacheweaver

    cacheweaver.register(which)
    from cag.bench import matrix

    matrix.register(which)
