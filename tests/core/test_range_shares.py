"""The shares of a projection's ranges among the nodes that share it: every node computes its
own from the same names, and together they run every range, evenly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fluvial.core.range_shares import share_of

names = st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=12)


@given(names, st.integers(min_value=1, max_value=64))
def test_the_live_nodes_shares_add_up_to_the_ranges_and_differ_by_at_most_one(
    live: set[str], ranges: int
) -> None:
    shares = {node: share_of(node, live, ranges) for node in live}
    assert sum(shares.values()) == ranges
    assert max(shares.values()) - min(shares.values()) <= 1


@given(names, st.text(min_size=1, max_size=8), st.integers(min_value=1, max_value=64))
def test_a_node_without_a_presence_slot_counts_as_the_last_one(
    live: set[str], outsider: str, ranges: int
) -> None:
    live.discard(outsider)
    nodes = len(live) + 1
    expected = ranges // nodes + (1 if len(live) < ranges % nodes else 0)
    assert share_of(outsider, live, ranges) == expected
    if len(live) >= ranges:  # as many live nodes as ranges: it stands by
        assert share_of(outsider, live, ranges) == 0


def test_three_nodes_and_eight_ranges() -> None:
    assert [share_of(n, {"a", "b", "c"}, 8) for n in "abc"] == [3, 3, 2]
    assert share_of("a", set(), 8) == 8
