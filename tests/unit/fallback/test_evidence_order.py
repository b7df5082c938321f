"""CacheWeaver's evidence ordering: the greedy walk over recently served orders, on constructed histories."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cag.fallback.core.evidence_order import EvidenceOrder, EvidenceTrie, RetrievalOrder


def test_retrieval_order_keeps_the_retrieved_order_and_learns_nothing() -> None:
    ordering: EvidenceOrder = RetrievalOrder()
    ordering.served(["a", "b", "c"])
    assert ordering.order(["c", "a", "b"]) == ["c", "a", "b"]


def test_an_empty_trie_keeps_retrieval_order() -> None:
    assert EvidenceTrie().order(["c", "a", "b"]) == ["c", "a", "b"]


def test_a_served_order_comes_back_for_the_same_set_retrieved_in_another_order() -> None:
    trie = EvidenceTrie()
    trie.served(["a", "b", "c"])
    assert trie.order(["c", "b", "a"]) == ["a", "b", "c"]


def test_the_walk_stops_where_the_history_does_and_the_rest_follows_in_retrieval_order() -> None:
    trie = EvidenceTrie()
    trie.served(["a", "b", "x"])
    # a, b are a served prefix; x was not retrieved; d, c follow as retrieval ranked them.
    assert trie.order(["d", "b", "c", "a"]) == ["a", "b", "d", "c"]


def test_the_walk_takes_the_most_recently_served_branch() -> None:
    trie = EvidenceTrie()
    trie.served(["a", "b", "c"])
    trie.served(["a", "c", "b"])
    assert trie.order(["b", "c", "a"]) == ["a", "c", "b"]
    trie.served(["a", "b", "c"])  # the older branch is fresh again
    assert trie.order(["b", "c", "a"]) == ["a", "b", "c"]


def test_a_branch_whose_next_chunk_was_not_retrieved_is_passed_over() -> None:
    trie = EvidenceTrie()
    trie.served(["b", "c"])
    trie.served(["a", "x"])  # fresher, but x is not retrieved: the walk still starts with a, then stops
    assert trie.order(["c", "b", "a"]) == ["a", "c", "b"]


def test_a_set_with_no_served_first_chunk_keeps_retrieval_order() -> None:
    trie = EvidenceTrie()
    trie.served(["x", "a", "b"])  # a, b were served, but never first: no cached prefix starts with them
    assert trie.order(["b", "a"]) == ["b", "a"]


def test_cached_prefix_counts_the_leading_chunks_served_before() -> None:
    trie = EvidenceTrie()
    trie.served(["a", "b", "c"])
    assert trie.cached_prefix(["a", "b", "d"]) == 2
    assert trie.cached_prefix(["b", "a"]) == 0


def test_the_trie_holds_at_most_its_capacity_dropping_the_least_recently_served_first() -> None:
    trie = EvidenceTrie(capacity=4)
    trie.served(["a", "b"])
    trie.served(["c", "d"])
    trie.served(["a", "e"])  # a is shared: 5 nodes, b (served longest ago, a leaf) goes
    assert len(trie) == 4
    assert trie.cached_prefix(["a", "b"]) == 1
    assert trie.cached_prefix(["c", "d"]) == 2
    assert trie.cached_prefix(["a", "e"]) == 2
    trie.served(["f"])  # then d, then c: a parent never goes before its children
    trie.served(["g"])
    assert len(trie) == 4
    assert trie.cached_prefix(["c"]) == 0
    assert trie.order(["e", "a", "g", "f"]) == ["g", "e", "a", "f"]


def test_a_capacity_below_one_node_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 node"):
        EvidenceTrie(capacity=0)


chunk_ids = st.lists(st.sampled_from("abcdefgh"), max_size=8)


@given(history=st.lists(chunk_ids, max_size=20), retrieved=chunk_ids, capacity=st.integers(1, 12))
def test_ordering_never_changes_the_retrieved_chunks(
    history: list[list[str]], retrieved: list[str], capacity: int
) -> None:
    trie = EvidenceTrie(capacity=capacity)
    for served in history:
        trie.served(served)
        assert len(trie) <= capacity
    assert sorted(trie.order(retrieved)) == sorted(retrieved)
