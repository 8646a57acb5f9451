"""The offset tracker: which envelope is new, a duplicate or a sign of a gap, and what it
remembers (per slice, per entity) and forgets (entities older than the window); the slices
the query passes without events of theirs (`reach`, `move_quiet_slices`)."""

from __future__ import annotations

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, OffsetTracker
from fluvial.core.offset_verdicts import (
    Accepted,
    Duplicate,
    FillsPlaceholder,
    NeedsStoredSeqNr,
    RejectedBacktracking,
    RejectedSeqNr,
)
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.seen_entities import OffsetChanges, SeenEntity

QUERY = EnvelopeSource.QUERY
LIVE = EnvelopeSource.LIVE
REPLAY = EnvelopeSource.REPLAY
BACKTRACKING = EnvelopeSource.BACKTRACKING

SLICES = SliceRange(10, 12)


def record(pid: str, seq_nr: int, timestamp: int, slice_: int = 10) -> EventRecord:
    return EventRecord(
        persistence_id=pid,
        seq_nr=seq_nr,
        entity_type="T",
        slice=slice_,
        payload=None,
        timestamp=timestamp,
    )


def fresh(window: int = 1_000_000) -> OffsetTracker:
    """A tracker of a projection that has never run: it knows every entity it has seen."""
    return OffsetTracker(SLICES, window=window, complete=True)


def handle(tracker: OffsetTracker, r: EventRecord, source: EnvelopeSource = QUERY) -> None:
    """Admit `r` as the runner does, for an entity the store has not seen either."""
    if tracker.validate(r, source) == NeedsStoredSeqNr(r.persistence_id):
        tracker.learn(r.persistence_id, None)
    assert tracker.validate(r, source) == Accepted()
    tracker.accept(r)
    if source is QUERY:
        tracker.passed(r)


def test_seq_nr_1_of_an_unknown_entity_is_accepted_from_every_source() -> None:
    tracker = fresh()
    for source in EnvelopeSource:
        assert tracker.validate(record("T|a", 1, 100), source) == Accepted()


def test_the_next_seq_nr_is_accepted_and_what_was_handled_is_a_duplicate() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100))
    handle(tracker, record("T|a", 2, 200))
    assert tracker.seq_nr_of("T|a") == 2
    for source in EnvelopeSource:
        assert tracker.validate(record("T|a", 3, 300), source) == Accepted()
        assert tracker.validate(record("T|a", 2, 200), source) == Duplicate()
        assert tracker.validate(record("T|a", 1, 100), source) == Duplicate()


def test_a_gap_asks_for_a_replay_from_the_first_missing_seq_nr() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100))
    handle(tracker, record("T|a", 2, 200))
    ahead = record("T|a", 5, 500)
    assert tracker.validate(ahead, LIVE) == RejectedSeqNr(expected_seq_nr=3)
    assert tracker.validate(ahead, REPLAY) == RejectedSeqNr(expected_seq_nr=3)
    assert tracker.validate(ahead, QUERY) == RejectedSeqNr(expected_seq_nr=3)
    assert tracker.validate(ahead, BACKTRACKING) == RejectedBacktracking(expected_seq_nr=3)
    # Asking changes nothing: the entity is still at 2.
    assert tracker.seq_nr_of("T|a") == 2
    assert tracker.validate(record("T|a", 3, 300), LIVE) == Accepted()


def test_the_query_may_show_an_entity_first_above_seq_nr_1() -> None:
    # Its earlier events precede where the projection started.
    tracker = fresh()
    assert tracker.validate(record("T|a", 7, 100), QUERY) == Accepted()
    # The other paths do not see events in order, so for them it is a gap from 1.
    assert tracker.validate(record("T|a", 7, 100), LIVE) == RejectedSeqNr(1)
    assert tracker.validate(record("T|a", 7, 100), REPLAY) == RejectedSeqNr(1)
    assert tracker.validate(record("T|a", 7, 100), BACKTRACKING) == RejectedBacktracking(1)


def test_an_incomplete_tracker_asks_the_store_about_an_entity_it_does_not_hold() -> None:
    tracker = OffsetTracker(SLICES)  # loaded from a store that may know more
    r = record("T|a", 6, 100)
    for source in EnvelopeSource:
        assert tracker.validate(r, source) == NeedsStoredSeqNr("T|a")
    tracker.learn("T|a", SeenEntity("T|a", 5, 50, 10))
    assert tracker.validate(r, LIVE) == Accepted()
    assert tracker.validate(record("T|a", 5, 50), LIVE) == Duplicate()
    assert tracker.validate(record("T|a", 8, 300), LIVE) == RejectedSeqNr(6)
    # Learning is not handling: nothing to persist.
    assert tracker.take_changes().empty


def test_an_entity_the_store_never_saw_starts_at_seq_nr_1() -> None:
    tracker = OffsetTracker(SLICES)
    assert tracker.validate(record("T|b", 1, 100), LIVE) == NeedsStoredSeqNr("T|b")
    tracker.learn("T|b", None)
    assert tracker.validate(record("T|b", 1, 100), LIVE) == Accepted()
    assert tracker.validate(record("T|b", 2, 100), LIVE) == RejectedSeqNr(1)


def test_a_complete_tracker_never_asks_the_store() -> None:
    tracker = fresh()
    for seq_nr in range(1, 4):
        r = record(f"T|{seq_nr}", 1, seq_nr)
        assert not isinstance(tracker.validate(r, LIVE), NeedsStoredSeqNr)


def test_resume_offset_is_the_start_while_any_slice_of_the_range_has_none() -> None:
    assert fresh().resume_offset() == TimestampOffset.start()
    tracker = OffsetTracker(
        SLICES, slice_offsets={10: TimestampOffset(500), 11: TimestampOffset(600)}
    )
    assert tracker.resume_offset() == TimestampOffset.start()


def test_resume_offset_is_the_earliest_slice_offset_with_what_was_seen_at_it() -> None:
    tracker = OffsetTracker(
        SLICES,
        slice_offsets={
            10: TimestampOffset(500, {"T|a": 3}),
            11: TimestampOffset(400, {"T|b": 2}),
            12: TimestampOffset(400, {"T|c": 9}),
        },
    )
    assert tracker.resume_offset() == TimestampOffset(400, {"T|b": 2, "T|c": 9})


def test_passed_moves_a_slice_offset_forward_only() -> None:
    tracker = fresh()
    tracker.passed(record("T|a", 1, 100, slice_=11))
    assert tracker.slice_offset(11) == TimestampOffset(100, {"T|a": 1})
    tracker.passed(record("T|b", 4, 100, slice_=11))  # same timestamp: both seen
    assert tracker.slice_offset(11) == TimestampOffset(100, {"T|a": 1, "T|b": 4})
    tracker.passed(record("T|c", 1, 50, slice_=11))  # behind: ignored
    tracker.passed(record("T|a", 1, 100, slice_=11))  # already seen: ignored
    assert tracker.slice_offset(11) == TimestampOffset(100, {"T|a": 1, "T|b": 4})
    tracker.passed(record("T|a", 2, 300, slice_=11))
    assert tracker.slice_offset(11) == TimestampOffset(300, {"T|a": 2})
    assert tracker.slice_offset(10) is None
    assert tracker.slice_offset(12) is None


def test_handling_does_not_move_the_slice_offset() -> None:
    # Live and replayed envelopes arrive out of timestamp order: only the query moves it.
    tracker = fresh()
    r = record("T|a", 1, 100)
    tracker.accept(r)
    assert tracker.slice_offset(10) is None
    assert tracker.take_changes().slice_offsets == {}


def test_take_changes_returns_what_changed_since_the_last_call() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100, slice_=10))
    handle(tracker, record("T|a", 2, 200, slice_=10))
    handle(tracker, record("T|b", 1, 300, slice_=12))
    changes = tracker.take_changes()
    assert not changes.empty
    assert sorted(changes.entities, key=lambda e: e.persistence_id) == [
        SeenEntity("T|a", 2, 200, 10),
        SeenEntity("T|b", 1, 300, 12),
    ]
    assert changes.slice_offsets == {
        10: TimestampOffset(200, {"T|a": 2}),
        12: TimestampOffset(300, {"T|b": 1}),
    }
    assert tracker.take_changes() == OffsetChanges((), {})
    assert tracker.take_changes().empty
    # A duplicate from the query changes nothing either.
    tracker.validate(record("T|a", 2, 200), QUERY)
    tracker.passed(record("T|a", 2, 200, slice_=10))
    assert tracker.take_changes().empty


def test_changes_carry_the_seq_nr_each_entity_had_before_them() -> None:
    """What the store must still hold for the changes to apply (its compare-and-set)."""
    tracker = OffsetTracker(SLICES)
    tracker.learn("T|a", SeenEntity("T|a", 4, 50, 10))
    tracker.learn("T|b", None)
    for r in (record("T|a", 5, 100), record("T|a", 6, 110), record("T|b", 1, 120)):
        assert tracker.validate(r, LIVE) == Accepted()
        tracker.accept(r)
    assert tracker.take_changes().previous == {"T|a": 4, "T|b": 0}
    tracker.accept(record("T|a", 7, 130))
    assert tracker.take_changes().previous == {"T|a": 6}
    assert tracker.take_changes().previous == {}


def test_changes_carry_the_generation_the_tracker_was_loaded_with() -> None:
    """What the store compares with its own: a management call since makes a newer one."""
    tracker = OffsetTracker(SLICES, generation=3, complete=True)
    handle(tracker, record("T|a", 1, 100))
    first = tracker.take_changes()
    handle(tracker, record("T|a", 2, 200))
    later = tracker.take_changes()
    assert (first.generation, later.generation) == (3, 3)
    assert first.then(later).generation == 3
    assert OffsetChanges((), {}).generation == 0


def test_a_tracker_rebuilt_from_its_changes_decides_the_same() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100, slice_=10))
    handle(tracker, record("T|b", 1, 150, slice_=11))
    handle(tracker, record("T|c", 1, 160, slice_=12))
    handle(tracker, record("T|a", 2, 200, slice_=10))
    changes = tracker.take_changes()
    rebuilt = OffsetTracker(
        SLICES, slice_offsets=changes.slice_offsets, entities=changes.entities, complete=True
    )
    assert rebuilt.resume_offset() == TimestampOffset(150, {"T|b": 1})
    for r in [record("T|a", 2, 200), record("T|a", 3, 300), record("T|b", 3, 300)]:
        assert rebuilt.validate(r, LIVE) == tracker.validate(r, LIVE)


def test_entities_older_than_the_window_leave_memory_and_are_then_looked_up() -> None:
    tracker = fresh(window=1000)
    handle(tracker, record("T|a", 1, 100))
    handle(tracker, record("T|b", 1, 200))
    tracker.take_changes()  # saved: nothing pins them in memory
    handle(tracker, record("T|c", 1, 5000))
    assert tracker.entities_in_memory == 1
    assert tracker.seq_nr_of("T|a") is None
    # The tracker no longer knows every entity: even a never-seen one is asked about.
    assert tracker.validate(record("T|a", 2, 5100), LIVE) == NeedsStoredSeqNr("T|a")
    assert tracker.validate(record("T|z", 1, 5100), LIVE) == NeedsStoredSeqNr("T|z")
    tracker.learn("T|a", SeenEntity("T|a", 1, 100, 10))
    assert tracker.validate(record("T|a", 2, 5100), LIVE) == Accepted()
    assert tracker.validate(record("T|a", 1, 100), LIVE) == Duplicate()


def test_entities_within_the_window_stay() -> None:
    tracker = fresh(window=1000)
    handle(tracker, record("T|a", 1, 4500))
    tracker.take_changes()
    handle(tracker, record("T|c", 1, 5000))
    assert tracker.seq_nr_of("T|a") == 1
    assert tracker.validate(record("T|z", 1, 5100), LIVE) == Accepted()  # still complete


def test_unsaved_entities_never_leave_memory() -> None:
    tracker = fresh(window=1000)
    handle(tracker, record("T|a", 1, 100))
    handle(tracker, record("T|b", 1, 200))
    tracker.take_changes()
    handle(tracker, record("T|a", 2, 300))  # dirty: not yet persisted
    handle(tracker, record("T|c", 1, 10_000))
    assert tracker.seq_nr_of("T|a") == 2
    assert tracker.seq_nr_of("T|b") is None
    changes = tracker.take_changes()
    assert SeenEntity("T|a", 2, 300, 10) in changes.entities
    # Saved now, so the next sweep may take it.
    handle(tracker, record("T|d", 1, 20_000))
    assert tracker.seq_nr_of("T|a") is None


def test_memory_stays_bounded_by_the_window() -> None:
    window, step = 10_000, 100
    tracker = fresh(window=window)
    most = 0
    for i in range(2000):
        handle(tracker, record(f"T|{i}", 1, (i + 1) * step))
        tracker.take_changes()
        most = max(most, tracker.entities_in_memory)
    # At most a window and a half of event time (sweeps are amortized over half a window).
    assert most <= 1.5 * window / step + 2
    assert tracker.entities_in_memory <= 1.5 * window / step + 2


def test_a_tracker_loaded_with_old_entities_evicts_them_once_time_moves_on() -> None:
    old = [SeenEntity(f"T|{i}", 3, i, 10) for i in range(100)]
    tracker = OffsetTracker(SLICES, entities=old, window=1000, complete=True)
    assert tracker.entities_in_memory == 100
    handle(tracker, record("T|new", 1, 50_000))
    assert tracker.entities_in_memory == 1
    assert tracker.validate(record("T|5", 4, 50_001), LIVE) == NeedsStoredSeqNr("T|5")


def test_rolling_back_to_a_savepoint_undoes_the_admission_of_one_record() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100, slice_=10))
    tracker.take_changes()
    handle(tracker, record("T|b", 1, 150, slice_=10))
    untouched = record("T|a", 2, 200, slice_=10)
    savepoint = tracker.savepoint(untouched)
    handle(tracker, untouched)
    tracker.roll_back_to(savepoint)
    assert tracker.validate(untouched, QUERY) == Accepted()  # not handled after all
    changes = tracker.take_changes()
    assert changes.entities == (SeenEntity("T|b", 1, 150, 10),)
    assert changes.slice_offsets == {10: TimestampOffset(150, {"T|b": 1})}
    assert changes.previous == {"T|b": 0}


def test_a_replay_is_judged_against_what_was_handled_a_stream_against_what_was_seen() -> None:
    """After placeholders (seen, not handled), a replay of them fills them in order."""
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100))
    tracker.saw_placeholder(record("T|a", 2, 200))
    tracker.saw_placeholder(record("T|a", 3, 300))
    assert (tracker.seq_nr_of("T|a"), tracker.handled_seq_nr_of("T|a")) == (3, 1)
    for source in (QUERY, LIVE, BACKTRACKING):
        assert tracker.validate(record("T|a", 2, 200), source) == Duplicate()
        assert tracker.validate(record("T|a", 4, 400), source) == Accepted()
    assert tracker.validate(record("T|a", 1, 100), REPLAY) == Duplicate()
    assert tracker.validate(record("T|a", 2, 200), REPLAY) == FillsPlaceholder()
    assert tracker.validate(record("T|a", 3, 300), REPLAY) == RejectedSeqNr(2)
    assert tracker.validate(record("T|a", 6, 600), LIVE) == RejectedSeqNr(2)
    assert tracker.validate(record("T|a", 6, 600), BACKTRACKING) == RejectedBacktracking(2)
    tracker.fill_placeholder(record("T|a", 2, 200))
    assert (tracker.seq_nr_of("T|a"), tracker.handled_seq_nr_of("T|a")) == (3, 2)
    assert tracker.take_changes().entities == (SeenEntity("T|a", 3, 300, 10, placeholders=1),)


def restarted(tracker: OffsetTracker, slices: SliceRange = SLICES) -> OffsetTracker:
    """A tracker loaded from what `tracker` handed out to save."""
    return OffsetTracker(slices, slice_offsets=tracker.take_changes().slice_offsets)


def test_the_slices_without_events_move_to_the_newest_the_query_delivered() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100, slice_=10))
    handle(tracker, record("T|a", 2, 250, slice_=10))
    assert restarted(tracker).resume_offset() == TimestampOffset.start()  # 11, 12: none

    handle(tracker, record("T|a", 3, 300, slice_=10))
    assert tracker.move_quiet_slices() == 2  # 11 and 12; 10 is at 300 already
    changes = tracker.take_changes()
    assert changes.slice_offsets == {
        10: TimestampOffset(300, {"T|a": 3}),
        11: TimestampOffset(300, {}),
        12: TimestampOffset(300, {}),
    }
    assert OffsetTracker(SLICES, slice_offsets=changes.slice_offsets).resume_offset() == (
        TimestampOffset(300, {"T|a": 3})
    )


def test_a_slice_left_behind_by_its_last_event_moves_too() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100, slice_=10))
    handle(tracker, record("T|b", 1, 900, slice_=11))
    handle(tracker, record("T|c", 1, 900, slice_=12))
    assert tracker.move_quiet_slices() == 1
    assert tracker.slice_offset(10) == TimestampOffset(900, {})
    assert tracker.slice_offset(11) == TimestampOffset(900, {"T|b": 1})  # not moved
    assert tracker.move_quiet_slices() == 0  # nothing more until the query moves on


def test_reach_moves_them_without_a_record() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100, slice_=10))
    tracker.reach(5_000)  # what the query read after it, a filter left out
    tracker.reach(4_000)  # an older position changes nothing
    assert tracker.move_quiet_slices() == 3
    assert restarted(tracker).resume_offset() == TimestampOffset(5_000, {})


def test_nothing_moves_before_the_query_delivered_anything() -> None:
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100), EnvelopeSource.LIVE)  # not the query's
    assert tracker.move_quiet_slices() == 0
    assert tracker.take_changes().slice_offsets == {}


def test_a_roll_back_takes_back_where_the_query_came() -> None:
    """At-least-once, a stop in the handler undoes the admission of the record in hand: the
    position it brought must not move the quiet slices past it."""
    tracker = fresh()
    handle(tracker, record("T|a", 1, 100, slice_=10))
    late = record("T|b", 1, 700, slice_=11)
    savepoint = tracker.savepoint(late)
    handle(tracker, late)
    tracker.roll_back_to(savepoint)
    tracker.move_quiet_slices()
    assert tracker.slice_offset(12) == TimestampOffset(100, {})
