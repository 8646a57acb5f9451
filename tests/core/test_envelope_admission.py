"""What the runner does with each envelope (`fluvial.core.envelope_admission`): handle, drop,
look the entity up, replay a gap, and move the slice offset only for the query."""

from __future__ import annotations

import pytest

from fluvial.core.envelope_admission import (
    DROP,
    HANDLE,
    Load,
    LookUp,
    Replay,
    admit,
    admit_replayed,
)
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, OffsetTracker, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload

QUERY = EnvelopeSource.QUERY
LIVE = EnvelopeSource.LIVE
REPLAY = EnvelopeSource.REPLAY
BACKTRACKING = EnvelopeSource.BACKTRACKING
NOT_THE_QUERY = [LIVE, BACKTRACKING, REPLAY]

SLICES = SliceRange(10, 10)


PAYLOAD = SerializedPayload("T.Event", 1, b"")


def record(pid: str, seq_nr: int, timestamp: int, slice_: int = 10) -> EventRecord:
    return EventRecord(pid, seq_nr, "T", slice_, PAYLOAD, timestamp=timestamp)


def placeholder(pid: str, seq_nr: int, timestamp: int, slice_: int = 10) -> EventRecord:
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


def test_only_the_query_moves_the_slice_offset_past_where_it_has_been() -> None:
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


def test_backtracking_moves_the_slice_offset_only_behind_where_the_query_has_been() -> None:
    """A late event that backtracking finds behind what the query delivered in this run moves
    its slice's offset (else a slice whose last event committed late would stay behind it,
    and `backlog` count it, though it is handled); one ahead of the query does not, nor one
    behind a stored offset only."""
    two_slices = SliceRange(10, 11)
    tracker = OffsetTracker(two_slices, complete=True)
    admit(tracker, record("T|a", 1, 300, slice_=11), QUERY)  # the query has reached 300
    assert admit(tracker, placeholder("T|late", 1, 200), BACKTRACKING) == Load("T|late", 1)
    assert tracker.slice_offset(10) is None  # nothing changed before the load
    assert admit(tracker, record("T|late", 1, 200), BACKTRACKING, loaded=True) is HANDLE
    assert tracker.slice_offset(10) == TimestampOffset(200, {"T|late": 1})
    assert admit(tracker, record("T|b", 1, 400), BACKTRACKING, loaded=True) is HANDLE
    assert tracker.slice_offset(10) == TimestampOffset(200, {"T|late": 1})
    # Restarted: slice 11's stored offset is at 300, but this run's query reached nothing.
    loaded = OffsetTracker(two_slices, slice_offsets={11: TimestampOffset(300)}, complete=True)
    assert admit(loaded, record("T|c", 1, 250), BACKTRACKING, loaded=True) is HANDLE
    assert loaded.slice_offset(10) is None


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


def test_a_placeholder_moves_the_seq_nr_and_the_offset_and_is_not_handled() -> None:
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), QUERY)
    assert admit(tracker, placeholder("T|a", 2, 200), QUERY) is DROP
    assert tracker.seq_nr_of("T|a") == 2
    assert tracker.handled_seq_nr_of("T|a") == 1
    assert tracker.slice_offset(10) == TimestampOffset(200, {"T|a": 2})
    # The seq nrs stay gapless: the next event is no gap, and a placeholder seen again is
    # a duplicate.
    assert admit(tracker, placeholder("T|a", 2, 200), LIVE) is DROP
    assert admit(tracker, record("T|a", 3, 300), LIVE) is HANDLE
    assert tracker.handled_seq_nr_of("T|a") == 3


def test_an_entity_included_later_gets_its_history_replayed_not_dropped() -> None:
    """Its events came as placeholders (a filter excluded it); the filter now includes it
    and the producer replays its history: what was only a placeholder is handled."""
    tracker = fresh()
    assert admit(tracker, record("T|a", 1, 100), QUERY) is HANDLE
    for seq_nr in (2, 3, 4):
        assert admit(tracker, placeholder("T|a", seq_nr, seq_nr * 100), QUERY) is DROP
    history = [record("T|a", n, n * 100) for n in (1, 2, 3, 4)]
    assert admit_replayed(tracker, history) == history[1:]
    assert tracker.seq_nr_of("T|a") == tracker.handled_seq_nr_of("T|a") == 4
    assert admit_replayed(tracker, history) == []  # now they are duplicates
    assert admit(tracker, record("T|a", 5, 500), LIVE) is HANDLE


def test_a_replay_fills_placeholders_in_order_only() -> None:
    tracker = fresh()
    for seq_nr in (1, 2, 3):
        admit(tracker, placeholder("T|a", seq_nr, seq_nr * 100), LIVE)
    assert tracker.handled_seq_nr_of("T|a") == 0
    assert admit(tracker, record("T|a", 2, 200), REPLAY) is DROP  # 1 first
    assert tracker.handled_seq_nr_of("T|a") == 0
    assert admit(tracker, record("T|a", 1, 100), REPLAY) is HANDLE
    assert admit(tracker, record("T|a", 2, 200), REPLAY) is HANDLE
    assert tracker.seq_nr_of("T|a") == 3
    assert tracker.handled_seq_nr_of("T|a") == 2


def test_a_placeholder_in_a_replay_is_settled() -> None:
    """The producer's transformation drops it whatever the filter: nothing more to wait for."""
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), LIVE)
    for seq_nr in (2, 3, 4):
        admit(tracker, placeholder("T|a", seq_nr, seq_nr * 100), LIVE)
    replayed = [record("T|a", 2, 200), placeholder("T|a", 3, 300), record("T|a", 4, 400)]
    assert admit_replayed(tracker, replayed) == [replayed[0], replayed[2]]
    assert tracker.handled_seq_nr_of("T|a") == 4
    # And one that a gap's replay brings moves the entity on without waiting either.
    assert admit(tracker, record("T|a", 7, 700), LIVE) == Replay("T|a", 5, 7)
    gap = [placeholder("T|a", 5, 500), record("T|a", 6, 600), record("T|a", 7, 700)]
    assert admit_replayed(tracker, gap) == gap[1:]
    assert tracker.seq_nr_of("T|a") == tracker.handled_seq_nr_of("T|a") == 7


def test_a_gap_after_placeholders_is_replayed_from_the_first_placeholder() -> None:
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), LIVE)
    admit(tracker, placeholder("T|a", 2, 200), LIVE)
    admit(tracker, placeholder("T|a", 3, 300), LIVE)
    assert admit(tracker, record("T|a", 5, 500), LIVE) == Replay("T|a", 2, 5)
    assert admit(tracker, record("T|a", 5, 500), BACKTRACKING) == Replay("T|a", 2, 5)
    missing = [record("T|a", n, n * 100) for n in (2, 3, 4, 5)]
    assert admit_replayed(tracker, missing) == missing


def test_a_handled_event_after_placeholders_settles_them() -> None:
    """An entity's events are handled in seq nr order: once a later one is handled, the
    placeholders before it are no longer replayed."""
    tracker = fresh()
    admit(tracker, placeholder("T|a", 1, 100), LIVE)
    assert admit(tracker, record("T|a", 2, 200), LIVE) is HANDLE
    assert tracker.handled_seq_nr_of("T|a") == 2
    assert admit(tracker, record("T|a", 1, 100), REPLAY) is DROP


def test_placeholders_are_persisted_with_the_changes_and_survive_a_restart() -> None:
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), QUERY)
    admit(tracker, placeholder("T|a", 2, 200), QUERY)
    admit(tracker, placeholder("T|a", 3, 300), QUERY)
    changes = tracker.take_changes()
    assert changes.entities == (SeenEntity("T|a", 3, 300, 10, placeholders=2),)
    assert changes.previous == {"T|a": 0}
    tracker = OffsetTracker(SLICES, slice_offsets=changes.slice_offsets)
    assert admit(tracker, record("T|a", 2, 200), REPLAY) == LookUp("T|a")
    tracker.learn("T|a", changes.entities[0])
    assert admit(tracker, record("T|a", 2, 200), REPLAY) is HANDLE
    assert tracker.take_changes().entities == (SeenEntity("T|a", 3, 300, 10, placeholders=1),)


def test_an_accepted_backtracking_record_without_payload_is_loaded_before_anything_changes() -> (
    None
):
    """The backtracking query reads without payloads: what it finds that is new is loaded
    (and then handled), what it finds that is a duplicate is dropped unloaded."""
    tracker = fresh()
    admit(tracker, record("T|a", 1, 100), QUERY)
    assert admit(tracker, placeholder("T|a", 1, 100), BACKTRACKING) is DROP  # not loaded
    assert admit(tracker, placeholder("T|b", 1, 150), BACKTRACKING) == Load("T|b", 1)
    assert tracker.seq_nr_of("T|b") is None
    assert [e.persistence_id for e in tracker.take_changes().entities] == ["T|a"]
    assert admit(tracker, record("T|b", 1, 150), BACKTRACKING, loaded=True) is HANDLE
    assert tracker.handled_seq_nr_of("T|b") == 1
    assert tracker.slice_offset(10) == TimestampOffset(100, {"T|a": 1})  # not moved by it


def test_a_loaded_backtracking_record_still_without_payload_is_a_placeholder() -> None:
    tracker = fresh()
    assert admit(tracker, placeholder("T|a", 1, 100), BACKTRACKING) == Load("T|a", 1)
    assert admit(tracker, placeholder("T|a", 1, 100), BACKTRACKING, loaded=True) is DROP
    assert tracker.seq_nr_of("T|a") == 1
    assert tracker.handled_seq_nr_of("T|a") == 0


def test_records_without_payload_from_other_paths_are_placeholders_never_loaded() -> None:
    for source in (QUERY, LIVE, REPLAY):
        assert admit(fresh(), placeholder("T|a", 1, 100), source) is DROP
