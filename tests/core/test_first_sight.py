"""The first-sight rule (`fluvial.core.first_sight`), through `admit` as the runner calls it:
an entity never seen, met at seq nr n > 1. With one writer the query's first sight is
accepted as is; with concurrent writers n is accepted only if n-1 is older than the tracker's
window behind the query's position in the slice, else the entity is replayed from seq nr 1."""

from __future__ import annotations

import msgspec
import pytest

from fluvial.core.envelope_admission import (
    HANDLE,
    Load,
    LookUpTimestamp,
    Replay,
    admit,
    admit_replayed,
)
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, FirstSight, OffsetTracker, PreviousEvent
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload

QUERY = EnvelopeSource.QUERY
LIVE = EnvelopeSource.LIVE
BACKTRACKING = EnvelopeSource.BACKTRACKING
STREAMS = [QUERY, LIVE, BACKTRACKING]
CONCURRENT = FirstSight.PREVIOUS_OLDER_THAN_WINDOW
SLICES = SliceRange(10, 11)
WINDOW = 1_000
PAYLOAD = SerializedPayload("T.Event", 1, b"")


def record(pid: str, seq_nr: int, timestamp: int, slice_: int = 10) -> EventRecord:
    return EventRecord(pid, seq_nr, "T", slice_, PAYLOAD, timestamp=timestamp)


def tracker(rule: FirstSight, query_at: dict[int, int] | None = None) -> OffsetTracker:
    """A tracker that knows every entity it has seen (none), with the query at `query_at`
    (slice -> timestamp), e.g. after `set_offset`."""
    offsets = {s: TimestampOffset(t) for s, t in (query_at or {}).items()}
    return OffsetTracker(
        SLICES, slice_offsets=offsets, window=WINDOW, complete=True, first_sight=rule
    )


def test_with_one_writer_the_querys_first_sight_is_accepted_and_other_paths_replay() -> None:
    one_writer = tracker(FirstSight.QUERY_IN_COMMIT_ORDER)
    assert admit(one_writer, record("T|a", 3, 5_000), QUERY) is HANDLE
    for source in (LIVE, BACKTRACKING):
        assert admit(one_writer, record("T|b", 3, 5_000), source) == Replay("T|b", 1, 3)


@pytest.mark.parametrize("source", STREAMS)
def test_with_concurrent_writers_a_first_sight_above_1_asks_for_the_previous_timestamp(
    source: EnvelopeSource,
) -> None:
    concurrent = tracker(CONCURRENT, {10: 4_000})
    late = record("T|a", 3, 5_000)
    assert admit(concurrent, late, source) == LookUpTimestamp("T|a", 2)
    # Asking changed nothing: not the entity, not the slice offset.
    assert concurrent.seq_nr_of("T|a") is None
    assert concurrent.slice_offset(10) == TimestampOffset(4_000)
    assert concurrent.take_changes().empty


@pytest.mark.parametrize("source", STREAMS)
def test_a_previous_event_within_the_window_is_a_gap_replayed_from_seq_nr_1(
    source: EnvelopeSource,
) -> None:
    concurrent = tracker(CONCURRENT, {10: 4_000})
    three = record("T|a", 3, 5_000)
    # Seq nr 2 at 3_000: not older than 4_000 - WINDOW, so it may still be committing.
    answer = admit(concurrent, three, source, previous=PreviousEvent(3_000))
    assert answer == Replay("T|a", 1, 3)
    assert isinstance(answer, Replay)
    history = [record("T|a", 1, 2_000), record("T|a", 2, 3_000), three]
    assert admit_replayed(concurrent, history) == history
    assert concurrent.seq_nr_of("T|a") == 3


def test_a_previous_event_older_than_the_window_is_accepted() -> None:
    # As after `set_offset` to 4_000: seq nrs 1 and 2 precede where the projection starts.
    concurrent = tracker(CONCURRENT, {10: 4_000})
    assert admit(concurrent, record("T|a", 3, 5_000), QUERY, previous=PreviousEvent(2_999)) is (
        HANDLE
    )
    assert concurrent.seq_nr_of("T|a") == 3
    # The window is measured behind the query's position in the record's own slice.
    other_slice = record("T|b", 3, 5_000, slice_=11)
    assert admit(concurrent, other_slice, QUERY, previous=PreviousEvent(2_999)) == Replay(
        "T|b", 1, 3
    )


def test_a_previous_event_the_source_does_not_have_is_accepted() -> None:
    concurrent = tracker(CONCURRENT)
    assert admit(concurrent, record("T|a", 3, 5_000), LIVE, previous=PreviousEvent(None)) is (
        HANDLE
    )


def test_with_no_query_position_yet_the_entity_is_replayed() -> None:
    # A fresh projection reads from the first event: anything before seq nr n was missed.
    concurrent = tracker(CONCURRENT)
    answer = admit(concurrent, record("T|a", 2, 5_000), QUERY, previous=PreviousEvent(0))
    assert answer == Replay("T|a", 1, 2)


def test_seq_nr_1_and_known_entities_never_ask() -> None:
    concurrent = tracker(CONCURRENT)
    assert admit(concurrent, record("T|a", 1, 100), LIVE) is HANDLE
    assert admit(concurrent, record("T|a", 3, 300), LIVE) == Replay("T|a", 2, 3)


def test_a_backtracking_record_is_loaded_once_the_rule_accepts_it() -> None:
    concurrent = tracker(CONCURRENT, {10: 4_000})
    found = msgspec.structs.replace(record("T|a", 3, 5_000), payload=None)
    assert admit(concurrent, found, BACKTRACKING) == LookUpTimestamp("T|a", 2)
    previous = PreviousEvent(1_000)
    assert admit(concurrent, found, BACKTRACKING, previous=previous) == Load("T|a", 3)
    loaded = record("T|a", 3, 5_000)
    assert admit(concurrent, loaded, BACKTRACKING, loaded=True, previous=previous) is HANDLE
    assert concurrent.seq_nr_of("T|a") == 3


@pytest.mark.parametrize("source", STREAMS)
def test_replay_from_first_replays_every_first_sight_above_1_from_seq_nr_1(
    source: EnvelopeSource,
) -> None:
    # A consumer whose filter may have kept the entity's earlier events from it: whatever the
    # path, and however old the event before is, its history comes first, in order.
    filtered = tracker(FirstSight.REPLAY_FROM_FIRST, {10: 1_000_000})
    seen = record("T|a", 4, 5_000)
    gap = admit(filtered, seen, source)
    assert gap == Replay("T|a", 1, 4)
    history = [record("T|a", n, 10 * n) for n in (1, 2, 3, 4)]
    assert admit_replayed(filtered, history) == history
    assert admit(filtered, record("T|b", 1, 6_000), source) in (HANDLE, Load("T|b", 1))
