"""Persistence ids, the slice function (checked against Java) and slice ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluvial.core.errors import UsageError
from fluvial.core.ids import (
    NUMBER_OF_SLICES,
    InvalidPersistenceId,
    InvalidSliceRange,
    PersistenceId,
    ReplicatedPersistenceId,
    SliceRange,
    check_replica_id,
    java_string_hash,
    slice_for,
    slice_ranges,
)

# (string, Java's s.hashCode(), Math.abs(s.hashCode() % 1024)), printed once by a small Java 17
# program (OpenJDK 17.0.15). Non-ASCII, CJK, astral-plane characters (surrogate pairs in
# UTF-16), negative hashes (where Python's floored % would differ) and Integer.MIN_VALUE
# ("polygenelubricants") are all here.
JAVA_HASHES = [
    ("", 0, 0),
    ("a", 97, 97),
    ("ShoppingCart|cart-1", -1444431240, 392),
    ("ShoppingCart|cart-2", -1444431239, 391),
    ("ShoppingCart|abc", -19369170, 210),
    ("Account|12345", 1040093572, 388),
    ("polygenelubricants", -2147483648, 0),
    ("Order|\u00e9t\u00e9-\u00fc\u00df", 260755072, 640),
    ("Ordre|\u65e5\u672c\u8a9e", 1999570511, 591),
    ("Cart|\U0001f600", -2074105953, 97),
    ("Cart|\U0001f6d2-\U0001d11e", 2012113478, 582),
    ("Device|sensor-\u00f8\u00e6\u00e5-42", -462799167, 319),
    ("x|" + "y" * 100, -618321596, 700),
    ("x|\ud800", 174460, 380),  # a lone surrogate is one UTF-16 code unit, as in Java
]


def test_persistence_id_formats_and_parses_back() -> None:
    pid = PersistenceId("ShoppingCart", "cart-1")
    assert str(pid) == "ShoppingCart|cart-1"
    assert PersistenceId.parse("ShoppingCart|cart-1") == pid


def test_only_the_first_separator_splits_type_from_id() -> None:
    pid = PersistenceId.parse("ShoppingCart|a|b")
    assert (pid.entity_type, pid.entity_id) == ("ShoppingCart", "a|b")
    assert str(pid) == "ShoppingCart|a|b"
    assert PersistenceId.parse(str(pid)) == pid


@pytest.mark.parametrize("text", ["", "ShoppingCart", "|cart-1", "ShoppingCart|", "|"])
def test_parse_rejects_what_is_not_a_persistence_id(text: str) -> None:
    with pytest.raises(InvalidPersistenceId):
        PersistenceId.parse(text)


@pytest.mark.parametrize(
    ("entity_type", "entity_id"), [("", "x"), ("Shopping|Cart", "x"), ("ShoppingCart", "")]
)
def test_constructor_rejects_invalid_parts(entity_type: str, entity_id: str) -> None:
    with pytest.raises(InvalidPersistenceId) as raised:
        PersistenceId(entity_type, entity_id)
    assert isinstance(raised.value, UsageError)


@given(
    st.text(min_size=1).filter(lambda t: "|" not in t),
    st.text(min_size=1),
)
def test_any_valid_pair_round_trips_through_its_string(entity_type: str, entity_id: str) -> None:
    pid = PersistenceId(entity_type, entity_id)
    assert PersistenceId.parse(str(pid)) == pid
    assert pid.slice == slice_for(str(pid))


ENTITY_TYPES = st.text(min_size=1).filter(lambda t: "|" not in t)
REPLICA_IDS = st.text(min_size=1).filter(lambda t: "|" not in t)
# Entity ids rich in separators, where an ambiguous encoding would show.
ENTITY_IDS = st.lists(st.sampled_from(["|", "a", "é", "", "||", "\\"]), min_size=1).map("".join)
REPLICATED_IDS = st.builds(
    ReplicatedPersistenceId,
    ENTITY_TYPES,
    ENTITY_IDS.filter(bool) | st.text(min_size=1),
    REPLICA_IDS,
)


def test_replicated_persistence_id_formats_and_parses_back() -> None:
    rid = ReplicatedPersistenceId("ShoppingCart", "cart|7", "eu-west")
    assert str(rid) == "ShoppingCart|cart|7|eu-west"
    assert ReplicatedPersistenceId.parse("ShoppingCart|cart|7|eu-west") == rid
    assert rid.entity == PersistenceId("ShoppingCart", "cart|7")
    assert rid.at_replica("us-east") == ReplicatedPersistenceId("ShoppingCart", "cart|7", "us-east")
    assert rid.slice == slice_for("ShoppingCart|cart|7|eu-west")


@given(REPLICATED_IDS)
def test_any_replicated_id_round_trips_through_its_string(rid: ReplicatedPersistenceId) -> None:
    assert ReplicatedPersistenceId.parse(str(rid)) == rid


@given(REPLICATED_IDS, REPLICATED_IDS)
def test_distinct_replicated_ids_have_distinct_strings(
    first: ReplicatedPersistenceId, second: ReplicatedPersistenceId
) -> None:
    assert (str(first) == str(second)) == (first == second)


@given(ENTITY_TYPES, ENTITY_IDS.filter(bool), REPLICA_IDS, REPLICA_IDS)
def test_an_entity_id_ending_like_a_replica_still_parses_to_its_parts(
    entity_type: str, entity_id: str, replica: str, other: str
) -> None:
    # "Cart|x|A" as an entity id ("x|A") at replica B: the replica is only the last part.
    rid = ReplicatedPersistenceId(entity_type, f"{entity_id}|{other}", replica)
    parsed = ReplicatedPersistenceId.parse(str(rid))
    assert (parsed.entity_id, parsed.replica_id) == (f"{entity_id}|{other}", replica)


@pytest.mark.parametrize(
    "text", ["", "Cart", "Cart|x", "|x|A", "Cart||A", "Cart|x|", "||", "Cart|x|A|"]
)
def test_parse_rejects_what_is_not_a_replicated_persistence_id(text: str) -> None:
    with pytest.raises(InvalidPersistenceId):
        ReplicatedPersistenceId.parse(text)


@pytest.mark.parametrize(
    ("entity_type", "entity_id", "replica_id"),
    [
        ("", "x", "A"),
        ("Ca|rt", "x", "A"),
        ("Cart", "", "A"),
        ("Cart", "x", ""),
        ("Cart", "x", "A|B"),
    ],
)
def test_replicated_constructor_rejects_invalid_parts(
    entity_type: str, entity_id: str, replica_id: str
) -> None:
    with pytest.raises(InvalidPersistenceId):
        ReplicatedPersistenceId(entity_type, entity_id, replica_id)


def test_check_replica_id() -> None:
    assert check_replica_id("eu-west") == "eu-west"
    for bad in ("", "a|b", "|"):
        with pytest.raises(InvalidPersistenceId):
            check_replica_id(bad)


@pytest.mark.parametrize(("text", "java_hash", "java_slice"), JAVA_HASHES)
def test_string_hash_and_slice_match_java(text: str, java_hash: int, java_slice: int) -> None:
    assert java_string_hash(text) == java_hash
    assert slice_for(text) == java_slice


def test_slice_of_a_persistence_id_is_the_slice_of_its_string() -> None:
    assert PersistenceId("ShoppingCart", "cart-1").slice == 392
    assert PersistenceId.parse("Cart|\U0001f600").slice == 97


@given(st.text())
def test_hash_is_signed_32_bit_and_slice_in_range(text: str) -> None:
    assert -(2**31) <= java_string_hash(text) < 2**31
    assert 0 <= slice_for(text) < NUMBER_OF_SLICES


@pytest.mark.parametrize("count", [2**k for k in range(11)])
def test_slice_ranges_cover_every_slice_once_in_order(count: int) -> None:
    ranges = slice_ranges(count)
    assert len(ranges) == count
    assert [s for r in ranges for s in r] == list(range(NUMBER_OF_SLICES))
    assert {r.max - r.min + 1 for r in ranges} == {NUMBER_OF_SLICES // count}


def test_one_range_is_all_slices() -> None:
    assert slice_ranges(1) == [SliceRange.all()] == [SliceRange(0, 1023)]
    assert slice_ranges(4) == [
        SliceRange(0, 255),
        SliceRange(256, 511),
        SliceRange(512, 767),
        SliceRange(768, 1023),
    ]


@pytest.mark.parametrize("count", [0, -1, -4, 3, 5, 6, 1000, 1023, 2048])
def test_slice_ranges_refuses_counts_that_do_not_divide_1024(count: int) -> None:
    with pytest.raises(InvalidSliceRange):
        slice_ranges(count)


@pytest.mark.parametrize(("low", "high"), [(-1, 5), (5, 4), (0, 1024), (1024, 1024), (-3, -1)])
def test_slice_range_refuses_bounds_outside_0_1023_or_inverted(low: int, high: int) -> None:
    with pytest.raises(InvalidSliceRange) as raised:
        SliceRange(low, high)
    assert isinstance(raised.value, UsageError)


def test_slice_range_is_inclusive() -> None:
    r = SliceRange(256, 511)
    assert 256 in r
    assert 511 in r
    assert 255 not in r
    assert 512 not in r
    assert "300" not in r
    assert list(SliceRange(7, 7)) == [7]
    assert str(r) == "256-511"
