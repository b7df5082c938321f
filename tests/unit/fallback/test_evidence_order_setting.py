"""The fallback orders evidence with the CacheWeaver trie unless told to keep retrieval's order."""

from __future__ import annotations

from pathlib import Path

from cag.fallback.app import evidence_order_of
from cag.fallback.core.evidence_order import EvidenceTrie, RetrievalOrder
from cag.fallback.settings import FallbackSettings

INFRA = {"database_url": "postgresql+asyncpg://u:p@127.0.0.1:1/db", "nats_url": "nats://127.0.0.1:1"}


def settings(tmp_path: Path, **fields: object) -> FallbackSettings:
    key = tmp_path / "auth.key"
    key.write_text("00" * 32)
    return FallbackSettings(infra={**INFRA, "auth_key_file": key}, **fields)  # type: ignore[arg-type]


def test_the_trie_orders_evidence_by_default_and_the_orders_it_served_come_first(tmp_path: Path) -> None:
    order = evidence_order_of(settings(tmp_path, evidence_trie_nodes=64))
    assert isinstance(order, EvidenceTrie) and order.capacity == 64
    order.served(["c", "a"])
    assert order.order(["a", "b", "c"]) == ["c", "a", "b"]


def test_retrieval_order_when_asked(tmp_path: Path) -> None:
    order = evidence_order_of(settings(tmp_path, evidence_order="retrieval"))
    assert isinstance(order, RetrievalOrder)
    assert order.order(["a", "b", "c"]) == ["a", "b", "c"]
