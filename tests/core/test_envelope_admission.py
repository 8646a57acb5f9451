"""What the runner does with each envelope (`fluvial.core.envelope_admission`): handle, drop,
look the entity up, replay a gap, and move the slice offset only for the query."""

from __future__ import annotations

import pytest

from fluvial.core.envelope_admission import (
    DROP,
    HANDLE,
    LookUp,
    Replay,
    admit,
    admit_replayed,
)
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, OffsetTracker, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord

QUERY = EnvelopeSource.QUERY
LIVE = EnvelopeSource.LIVE
REPLAY = EnvelopeSource.REPLAY
BACKTRACKING = EnvelopeSource.BACKTRACKING
NOT_THE_QUERY = [LIVE, BACKTRACKING, REPLAY]

SLICES = SliceRange(10, 10)


def record(pid: str, seq_nr: int, timestamp: int, slice_: int = 10) -> EventRecord:
    return EventRecord(pid, seq_nr, "T", slice_, None, timestamp=timestamp)


def fresh() -> OffsetTracker:
    return OffsetTracker(SLICES, complete=True)


def restarted(tracker: OffsetTracker) -> OffsetTracker:
    """A crash after the tracker's changes were committed: a new tracker from the store."""
    changes = tracker.take_changes()
    return OffsetTracker(
        SLICES, slice_offsets=changes.slice_offsets, entities=changes.entities, complete=True
    )


def test_the_next_seq_nr_is_handled_and_counted_from_every_source() -> None:
    for source in EnvelopeSource:
        tracker = fresh()
        assert admit(tracker, record("T|a", 1, 100), source) is HANDLE
        assert tracker.seq_nr_of("T|a") == 1
        assert admit(tracker, record("T|a", 1, 100), source) is DROP  # a duplicate


def test_only_the_query_moves_the_slice_offset() -> None:
    for source in NOT_THE_QUERY:
        tracker = fresh()
        admit(tracker, record("T|a", 1, 100), source)
        assert tracker.slice_offset(10) is None, source
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), QUERY)
    assert tracker.slice_offset(10) == TimestampOffset(100, {"T|a": 1})
    # A duplicate from the query moves it too: the query has passed it.
    admit(tracker, record("T|b", 1, 200), LIVE)
    assert admit(tracker, record("T|b", 1, 200), QUERY) is DROP
    assert tracker.slice_offset(10) == TimestampOffset(200, {"T|b": 1})


@pytest.mark.parametrize("source", [LIVE, BACKTRACKING])
def test_an_event_handled_off_the_query_is_not_lost_across_a_crash(
    source: EnvelopeSource,
) -> None:
    """T|b#1 arrives (live, say) and is committed before the query has delivered T|a#1,
    committed earlier in the same slice. After a crash the query resumes from the stored
    offset: it must still deliver T|a#1, or no path ever will."""
    behind, ahead = record("T|a", 1, 100), record("T|b", 1, 200)
    tracker = fresh()
    assert admit(tracker, ahead, source) is HANDLE
    tracker = restarted(tracker)
    assert tracker.resume_offset().is_behind(behind)
    assert admit(tracker, behind, QUERY) is HANDLE
    assert admit(tracker, ahead, QUERY) is DROP


def test_a_gap_asks_for_a_replay_of_the_missing_events_and_the_record() -> None:
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), LIVE)
    ahead = record("T|a", 4, 400)
    assert admit(tracker, ahead, LIVE) == Replay("T|a", 2, 4)
    assert admit(tracker, ahead, BACKTRACKING) == Replay("T|a", 2, 4)
    assert tracker.seq_nr_of("T|a") == 1  # asking changed nothing
    missing = [record("T|a", n, n * 100) for n in (2, 3, 4)]
    assert admit_replayed(tracker, missing) == missing
    assert tracker.seq_nr_of("T|a") == 4


def test_a_gap_seen_by_the_query_moves_its_offset_and_asks_for_a_replay() -> None:
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), QUERY)
    assert admit(tracker, record("T|a", 3, 300), QUERY) == Replay("T|a", 2, 3)
    assert tracker.slice_offset(10) == TimestampOffset(300, {"T|a": 3})


def test_a_replay_never_asks_for_another_replay() -> None:
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), LIVE)
    assert admit(tracker, record("T|a", 3, 300), REPLAY) is DROP
    # A replay that comes back short hands over what follows on, and no more.
    replayed = [record("T|a", 2, 200), record("T|a", 4, 400)]
    assert admit_replayed(tracker, replayed) == replayed[:1]
    assert tracker.seq_nr_of("T|a") == 2


def test_an_entity_out_of_memory_is_looked_up_before_anything_changes() -> None:
    tracker = OffsetTracker(SLICES)  # loaded: the store may know more
    r = record("T|a", 6, 600)
    assert admit(tracker, r, QUERY) == LookUp("T|a")
    assert tracker.slice_offset(10) is None
    assert tracker.take_changes().empty
    tracker.learn("T|a", SeenEntity("T|a", 5, 500, 10))
    assert admit(tracker, r, QUERY) is HANDLE
    assert tracker.slice_offset(10) == TimestampOffset(600, {"T|a": 6})
