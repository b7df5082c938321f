"""Cache-aware evidence ordering (CacheWeaver): which order to put the retrieved chunks in so that the engine's
prefix cache already holds the longest possible start of the prompt.

The engine caches prompts by prefix: a request reuses the KV of every leading block equal to one it computed
before. Retrieval returns the same chunks for related questions, but in a different order each time (scores
move a little), so an identical set of evidence usually shares no prefix with the last request. `EvidenceTrie`
remembers the orders recently served; `order` walks it greedily from the root, at each step taking the child
present in the retrieved set that was served most recently (the engine's cache also evicts least recently used
blocks first, so the freshest branch is the likeliest still cached), and appends the chunks the walk did not reach
in retrieval order. Only the order changes: the returned list holds exactly the retrieved chunks.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_CAPACITY_NODES = 4096


class EvidenceOrder(Protocol):
    """How the fallback service orders retrieved chunks before building the prompt, and learns what it served."""

    def order(self, chunk_ids: Sequence[str]) -> list[str]:
        """The retrieved chunks (retrieval order in), every one exactly once, in the order to prompt with."""
        ...

    def served(self, chunk_ids: Sequence[str]) -> None:
        """Record the order a prompt was actually served in (its prefix is now in the engine's cache)."""
        ...


class RetrievalOrder:
    """Chunks in the order retrieval ranked them: the baseline without cache awareness."""

    def order(self, chunk_ids: Sequence[str]) -> list[str]:
        return list(chunk_ids)

    def served(self, chunk_ids: Sequence[str]) -> None:
        return None


@dataclass(eq=False, slots=True)
class _Node:
    chunk_id: str
    parent: _Node | None
    children: dict[str, _Node] = field(default_factory=dict)
    last_used: int = 0  # the `served` call that last went through this node (siblings never share one)


class EvidenceTrie:
    """The orders recently served, as a trie of chunk ids bounded to `capacity` nodes (least recently used first
    out). Thread-safe: one lock around each call, which costs microseconds next to a prefill."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY_NODES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 node, not {capacity}")
        self.capacity = capacity
        self._root = _Node(chunk_id="", parent=None)
        # Every node but the root, least recently used first. `served` moves a path's nodes to the end deepest
        # first, so a parent always sits after its children: the first node is always a leaf, safe to drop.
        self._lru: OrderedDict[_Node, None] = OrderedDict()
        self._clock = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lru)

    def order(self, chunk_ids: Sequence[str]) -> list[str]:
        left = Counter(chunk_ids)
        walked: list[str] = []
        with self._lock:
            node = self._root
            while True:
                choice = _freshest_child(node, left)
                if choice is None:
                    break
                walked.append(choice.chunk_id)
                left[choice.chunk_id] -= 1
                node = choice
        rest = Counter(walked)
        tail = []
        for chunk_id in chunk_ids:  # retrieval order for what the walk did not take
            if rest[chunk_id]:
                rest[chunk_id] -= 1
            else:
                tail.append(chunk_id)
        return walked + tail

    def served(self, chunk_ids: Sequence[str]) -> None:
        if not chunk_ids:
            return
        with self._lock:
            self._clock += 1
            node, path = self._root, []
            for chunk_id in chunk_ids:
                child = node.children.get(chunk_id)
                if child is None:
                    child = node.children[chunk_id] = _Node(chunk_id=chunk_id, parent=node)
                child.last_used = self._clock
                path.append(child)
                node = child
            for step in reversed(path):
                self._lru[step] = None
                self._lru.move_to_end(step)
            while len(self._lru) > self.capacity:
                self._drop_oldest()

    def cached_prefix(self, chunk_ids: Sequence[str]) -> int:
        """How many leading chunks of `chunk_ids` the trie holds as a served prefix."""
        with self._lock:
            node, depth = self._root, 0
            for chunk_id in chunk_ids:
                child = node.children.get(chunk_id)
                if child is None:
                    break
                node, depth = child, depth + 1
            return depth

    def _drop_oldest(self) -> None:
        leaf, _ = self._lru.popitem(last=False)
        assert leaf.parent is not None  # only the root has none, and it is never in the LRU order; leaves come first
        del leaf.parent.children[leaf.chunk_id]


def _freshest_child(node: _Node, wanted: Counter[str]) -> _Node | None:
    """The child of `node` still wanted that was served most recently; None when there is none."""
    best: _Node | None = None
    for chunk_id, count in wanted.items():  # the k retrieved, not the (many) children
        child = node.children.get(chunk_id) if count > 0 else None
        if child is not None and (best is None or child.last_used > best.last_used):
            best = child
    return best
