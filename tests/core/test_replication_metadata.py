"""Version vectors (their order and merge laws, their stored JSON form) and replication metadata."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluvial.core.errors import UsageError
from fluvial.core.replication_metadata import (
    InvalidReplicationMetadata,
    ReplicationMetadata,
    VersionOrder,
    VersionVector,
)

REPLICAS = st.sampled_from(["A", "B", "C", "eu-west", "ü"])
VECTORS = st.dictionaries(REPLICAS, st.integers(0, 5)).map(VersionVector.of)


def test_a_vector_counts_events_per_replica() -> None:
    vector = VersionVector.empty().incremented("B").incremented("A").incremented("B")
    assert vector == VersionVector.of({"A": 1, "B": 2, "C": 0})
    assert vector.counters == (("A", 1), ("B", 2))
    assert (vector.counter("B"), vector.counter("C")) == (2, 0)
    assert vector.as_dict() == {"A": 1, "B": 2}


def test_compare_tells_before_after_same_and_concurrent() -> None:
    a1 = VersionVector.of({"A": 1})
    a1b1 = VersionVector.of({"A": 1, "B": 1})
    b1 = VersionVector.of({"B": 1})
    assert a1.compare(a1b1) is VersionOrder.BEFORE
    assert a1b1.compare(a1) is VersionOrder.AFTER
    assert a1.compare(b1) is VersionOrder.CONCURRENT
    assert a1.compare(VersionVector.of({"A": 1, "B": 0})) is VersionOrder.SAME
    assert VersionVector.empty().compare(a1) is VersionOrder.BEFORE


@given(VECTORS, VECTORS, VECTORS)
def test_merge_is_commutative_associative_and_idempotent(
    x: VersionVector, y: VersionVector, z: VersionVector
) -> None:
    assert x.merged(y) == y.merged(x)
    assert x.merged(y).merged(z) == x.merged(y.merged(z))
    assert x.merged(x) == x


@given(VECTORS, VECTORS)
def test_the_merge_is_at_or_after_both_and_compare_is_antisymmetric(
    x: VersionVector, y: VersionVector
) -> None:
    merged = x.merged(y)
    assert x.compare(merged) in (VersionOrder.BEFORE, VersionOrder.SAME)
    assert y.compare(merged) in (VersionOrder.BEFORE, VersionOrder.SAME)
    flipped = {
        VersionOrder.BEFORE: VersionOrder.AFTER,
        VersionOrder.AFTER: VersionOrder.BEFORE,
        VersionOrder.SAME: VersionOrder.SAME,
        VersionOrder.CONCURRENT: VersionOrder.CONCURRENT,
    }
    assert y.compare(x) is flipped[x.compare(y)]
    assert (x.compare(y) is VersionOrder.SAME) == (x == y)


@given(VECTORS, REPLICAS)
def test_an_increment_comes_after(x: VersionVector, replica: str) -> None:
    assert x.compare(x.incremented(replica)) is VersionOrder.BEFORE


@given(VECTORS)
def test_the_json_form_round_trips_and_is_sorted(x: VersionVector) -> None:
    assert VersionVector.from_json(x.to_json()) == x
    assert VersionVector.from_json(x.to_json().encode()) == x
    assert list(VersionVector.from_json(x.to_json()).as_dict()) == sorted(x.as_dict())


def test_the_json_form_is_plain_json() -> None:
    assert VersionVector.of({"B": 2, "A": 1}).to_json() == '{"A":1,"B":2}'
    assert VersionVector.empty().to_json() == "{}"


@pytest.mark.parametrize("text", ["", "[1]", '{"A": "x"}', '{"A": -1}', '{"": 1}', '{"a|b": 1}'])
def test_from_json_refuses_what_is_not_a_version_vector(text: str) -> None:
    with pytest.raises(InvalidReplicationMetadata):
        VersionVector.from_json(text)


@pytest.mark.parametrize(
    "counters",
    [(("B", 1), ("A", 1)), (("A", 1), ("A", 2)), (("A", 0),), (("A|B", 1),), (("", 1),)],
)
def test_a_vector_refuses_unsorted_repeated_zero_or_invalid_counters(
    counters: tuple[tuple[str, int], ...],
) -> None:
    with pytest.raises(InvalidReplicationMetadata) as raised:
        VersionVector(counters)
    assert isinstance(raised.value, UsageError)


def test_replication_metadata_checks_its_origin() -> None:
    metadata = ReplicationMetadata("A", 3, VersionVector.of({"A": 3, "B": 1}))
    assert metadata.version_vector.counter("A") == 3
    assert ReplicationMetadata("A", 1).version_vector == VersionVector.empty()
    for replica, seq_nr in [("", 1), ("A|B", 1), ("A", 0)]:
        with pytest.raises(InvalidReplicationMetadata):
            ReplicationMetadata(replica, seq_nr)
