"""The contract of loading and saving offsets: registration, what `load` holds (window,
completeness, generation), entities with placeholders, and compare-and-set saves and commits
that store everything or nothing."""

from __future__ import annotations

import msgspec
import pytest
import trio

from fluvial.core.envelope_admission import DROP, admit
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import (
    ACCEPTED,
    FILLS_PLACEHOLDER,
    EnvelopeSource,
    NeedsStoredSeqNr,
    OffsetTracker,
    SeenEntity,
)
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import ProjectionConflict, UnknownProjection
from fluvial.core.records import EventRecord
from fluvial.testing.offset_store_contract._fixture import (
    ENTITY_TYPE,
    OTHER_ENTITY_TYPE,
    PROJECTION,
    Fixture,
    _UserError,
    append,
    handled,
    load,
    pids_in,
    save_handled,
)


def _seen(record: EventRecord, placeholders: int = 0) -> SeenEntity:
    return SeenEntity(
        record.persistence_id, record.seq_nr, record.timestamp, record.slice, placeholders
    )


class SaveContract:
    """Registration, load and compare-and-set save / commit."""

    async def test_a_new_projection_loads_nothing_and_knows_it_has_seen_everything(
        self, offset_store: Fixture
    ) -> None:
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        tracker = await load(offset_store)
        assert tracker.resume_offset() == TimestampOffset.start()
        assert tracker.entities_in_memory == 0
        assert tracker.generation == 0
        (first,) = await append(offset_store.journal, pids_in(SliceRange.all(), 1)[0], 1, 1)
        # Complete: an entity it does not hold was never seen, no lookup needed.
        assert tracker.validate(first, EnvelopeSource.LIVE) is ACCEPTED
        assert await offset_store.store.load_entity(PROJECTION, first.persistence_id) is None

    async def test_a_projection_is_registered_with_one_entity_type(
        self, offset_store: Fixture
    ) -> None:
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await store.register(PROJECTION, ENTITY_TYPE)  # again: nothing changes
        with pytest.raises(UnknownProjection) as refused:
            await store.register(PROJECTION, OTHER_ENTITY_TYPE)
        assert refused.value.projection == PROJECTION

    async def test_saved_entities_and_slice_offsets_load_back(self, offset_store: Fixture) -> None:
        low, high = SliceRange(0, 511), SliceRange(512, 1023)
        (a,) = pids_in(low, 1)
        (b,) = pids_in(high, 1)
        stored = await append(offset_store.journal, a, 1, 3)
        stored += await append(offset_store.journal, b, 1, 2)
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        await save_handled(offset_store, stored)

        tracker = await load(offset_store)
        assert (tracker.seq_nr_of(str(a)), tracker.seq_nr_of(str(b))) == (3, 2)
        assert tracker.slice_offset(a.slice) == TimestampOffset(stored[2].timestamp, {str(a): 3})
        assert tracker.slice_offset(b.slice) == TimestampOffset(stored[4].timestamp, {str(b): 2})
        assert await offset_store.store.load_entity(PROJECTION, str(a)) == _seen(stored[2])
        assert await offset_store.store.load_entity(PROJECTION, str(b)) == _seen(stored[4])
        assert await offset_store.store.offsets(PROJECTION) == {
            a.slice: tracker.slice_offset(a.slice),
            b.slice: tracker.slice_offset(b.slice),
        }
        assert await offset_store.store.offsets(PROJECTION, high) == {
            b.slice: tracker.slice_offset(b.slice)
        }
        # An instance over part of the slices loads only theirs.
        part = await load(offset_store, low)
        assert part.seq_nr_of(str(a)) == 3
        assert part.slice_offset(b.slice) is None
        assert part.seq_nr_of(str(b)) is None

    async def test_entities_seen_as_placeholders_load_back_as_such(
        self, offset_store: Fixture
    ) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        first, second, third = await append(offset_store.journal, pid, 1, 3)
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        tracker = handled(await load(offset_store), [first])
        for placeholder in (second, third):  # a filter dropped them on the way
            without_payload = msgspec.structs.replace(placeholder, payload=None)
            assert admit(tracker, without_payload, EnvelopeSource.QUERY) is DROP
        await offset_store.store.save(PROJECTION, tracker.slices, tracker.take_changes())
        assert await offset_store.store.load_entity(PROJECTION, str(pid)) == _seen(third, 2)

        restarted = await load(offset_store)
        assert restarted.handled_seq_nr_of(str(pid)) == 1
        # A replay of them (the filter now includes the entity) is handled, not a duplicate.
        assert restarted.validate(second, EnvelopeSource.REPLAY) is FILLS_PLACEHOLDER
        restarted.fill_placeholder(second)
        await offset_store.store.save(PROJECTION, restarted.slices, restarted.take_changes())
        # The seq nr stayed where it was; only the placeholders changed, and that is stored.
        assert await offset_store.store.load_entity(PROJECTION, str(pid)) == _seen(third, 1)
        assert (await load(offset_store)).handled_seq_nr_of(str(pid)) == 2

    async def test_load_holds_the_entities_of_the_window_before_the_resume_point(
        self, offset_store: Fixture
    ) -> None:
        slice_ = SliceRange(7, 7)  # one slice: its offset is the resume point
        old, middle, recent, unseen = pids_in(slice_, 4)
        stored = [
            (await append(offset_store.journal, pid, 1, 1))[0] for pid in (old, middle, recent)
        ]
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        await save_handled(offset_store, stored)
        resume = stored[2].timestamp

        window = resume - stored[1].timestamp
        tracker = await offset_store.store.load(PROJECTION, slice_, window=window)
        assert tracker.resume_offset().timestamp == resume
        assert (tracker.seq_nr_of(str(middle)), tracker.seq_nr_of(str(recent))) == (1, 1)
        assert tracker.seq_nr_of(str(old)) is None
        # Not complete: an entity it does not hold must be looked up, and is in the store.
        assert tracker.validate(stored[0], EnvelopeSource.LIVE) == NeedsStoredSeqNr(str(old))
        assert await offset_store.store.load_entity(PROJECTION, str(old)) == _seen(stored[0])

        everything = await offset_store.store.load(PROJECTION, slice_, window=resume)
        assert everything.entities_in_memory == 3
        later = (await append(offset_store.journal, unseen, 1, 1))[0]
        assert everything.validate(later, EnvelopeSource.LIVE) is ACCEPTED  # complete

    async def test_a_save_from_offsets_that_changed_since_it_loaded_stores_nothing(
        self, offset_store: Fixture
    ) -> None:
        a, b = pids_in(SliceRange.all(), 2)
        a_events = await append(offset_store.journal, a, 1, 2)
        b_events = await append(offset_store.journal, b, 1, 1)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        first, second = await load(offset_store), await load(offset_store)
        handled(first, a_events[:1])
        await store.save(PROJECTION, first.slices, first.take_changes())
        before = (await store.load_entity(PROJECTION, str(a)), await store.offsets(PROJECTION))

        # The second instance also saw `a` as new, and `b`: none of it is stored.
        handled(second, [a_events[0], b_events[0]])
        with pytest.raises(ProjectionConflict) as conflict:
            await store.save(PROJECTION, second.slices, second.take_changes())
        assert (conflict.value.projection, conflict.value.slices) == (PROJECTION, second.slices)
        assert await store.load_entity(PROJECTION, str(b)) is None
        assert (await store.load_entity(PROJECTION, str(a)), await store.offsets(PROJECTION)) == (
            before
        )

        # A stored entity is compared by its seq nr: a save from an older one is refused.
        stale, current = await load(offset_store), await load(offset_store)
        handled(current, a_events[1:])
        await store.save(PROJECTION, current.slices, current.take_changes())
        handled(stale, a_events[1:])
        with pytest.raises(ProjectionConflict):
            await store.save(PROJECTION, stale.slices, stale.take_changes())
        assert await store.load_entity(PROJECTION, str(a)) == _seen(a_events[1])

    async def test_a_commit_stores_its_write_with_the_offsets_and_returns_its_result(
        self, offset_store: Fixture
    ) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 2)
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        tracker = handled(await load(offset_store), stored)
        calls: list[object] = []

        def write(txn: object) -> str:
            calls.append(txn)
            offset_store.note("handled 1..2")(txn)
            return "the result"

        result = await offset_store.store.commit(
            PROJECTION, tracker.slices, tracker.take_changes(), write
        )
        assert result == "the result"
        assert len(calls) == 1
        assert await offset_store.notes() == ["handled 1..2"]
        assert (await load(offset_store)).seq_nr_of(str(pid)) == 2

    async def test_a_conflicting_commit_runs_no_write(self, offset_store: Fixture) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 1)
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        first, second = await load(offset_store), await load(offset_store)
        await offset_store.store.commit(
            PROJECTION,
            first.slices,
            handled(first, stored).take_changes(),
            offset_store.note("first"),
        )
        calls: list[object] = []

        def write(txn: object) -> None:
            calls.append(txn)
            offset_store.note("second")(txn)

        with pytest.raises(ProjectionConflict):
            await offset_store.store.commit(
                PROJECTION, second.slices, handled(second, stored).take_changes(), write
            )
        assert calls == []
        assert await offset_store.notes() == ["first"]

    async def test_concurrent_commits_of_one_loaded_state_store_only_one(
        self, offset_store: Fixture
    ) -> None:
        """Compare and set is atomic: two instances that loaded the same offsets and commit
        at once (neither awaited before the other starts) cannot both pass the comparison."""
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 1)
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        outcomes: list[str] = []

        async def commit(tracker: OffsetTracker, name: str) -> None:
            changes = handled(tracker, stored).take_changes()
            try:
                await offset_store.store.commit(
                    PROJECTION, tracker.slices, changes, offset_store.note(name)
                )
                outcomes.append(name)
            except ProjectionConflict:
                outcomes.append("conflict")

        first, second = await load(offset_store), await load(offset_store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit, first, "first")
            nursery.start_soon(commit, second, "second")
        assert sorted(outcomes) in (["conflict", "first"], ["conflict", "second"])
        assert await offset_store.notes() == [n for n in outcomes if n != "conflict"]

    async def test_a_failing_write_stores_nothing_and_comes_out_as_itself(
        self, offset_store: Fixture
    ) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 2)
        await offset_store.store.register(PROJECTION, ENTITY_TYPE)
        tracker = handled(await load(offset_store), stored)
        changes = tracker.take_changes()
        error = _UserError("the handler failed")
        calls: list[object] = []

        def failing(txn: object) -> None:
            calls.append(txn)
            offset_store.note("half done")(txn)
            raise error

        with pytest.raises(_UserError) as raised:
            await offset_store.store.commit(PROJECTION, tracker.slices, changes, failing)
        assert raised.value is error
        assert len(calls) == 1
        assert await offset_store.notes() == []
        assert await offset_store.store.load_entity(PROJECTION, str(pid)) is None
        assert await offset_store.store.offsets(PROJECTION) == {}
        # Nothing was stored: the same changes still apply.
        await offset_store.store.commit(
            PROJECTION, tracker.slices, changes, offset_store.note("ok")
        )
        assert await offset_store.notes() == ["ok"]
        assert (await load(offset_store)).seq_nr_of(str(pid)) == 2

    async def test_saves_on_an_unknown_projection_are_refused(self, offset_store: Fixture) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 1)
        tracker = handled(OffsetTracker(SliceRange.all(), complete=True), stored)
        with pytest.raises(UnknownProjection):
            await offset_store.store.save(PROJECTION, tracker.slices, tracker.take_changes())
        with pytest.raises(UnknownProjection):
            await offset_store.store.load(PROJECTION, SliceRange.all(), window=1)
