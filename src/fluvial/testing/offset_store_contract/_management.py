"""The contract of the management calls: what `set_offset`, `skip_event` and `reset` store,
that each makes a running instance's next save a conflict, `backlog`, `wait_until_caught_up`,
and the errors of each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import ACCEPTED, EnvelopeSource, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import ProjectionConflict, UnknownEvent, UnknownProjection
from fluvial.testing.journal_contract import entity_ids, events
from fluvial.testing.offset_store_contract._fixture import (
    ENTITY_TYPE,
    OTHER_ENTITY_TYPE,
    PROJECTION,
    TIMEOUT,
    Fixture,
    _UserError,
    append,
    handled,
    load,
    pids_in,
    save_handled,
)


class ManagementContract:
    """`offsets`, `set_offset`, `skip_event`, `reset`, `backlog`, `wait_until_caught_up`."""

    async def test_management_calls_on_an_unknown_projection_are_refused(
        self, offset_store: Fixture
    ) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        await append(offset_store.journal, pid, 1, 1)
        store, name, all_ = offset_store.store, "never-registered", SliceRange.all()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.offsets(name),
            lambda: store.set_offset(name, all_, TimestampOffset.start()),
            lambda: store.skip_event(name, str(pid), 1),
            lambda: store.reset(name, clear_read_model=offset_store.clear_notes),
            lambda: store.backlog(name, ENTITY_TYPE, all_),
            lambda: store.wait_until_caught_up(name),
        ]
        for call in calls:
            with pytest.raises(UnknownProjection) as refused:
                await call()
            assert refused.value.projection == name
        assert await offset_store.notes() == []
        await store.register(PROJECTION, ENTITY_TYPE)
        with pytest.raises(UnknownProjection):
            await store.backlog(PROJECTION, OTHER_ENTITY_TYPE, all_)

    async def test_each_management_call_makes_a_loaded_tracker_stale(
        self, offset_store: Fixture
    ) -> None:
        a, b = pids_in(SliceRange.all(), 2)
        a_events = await append(offset_store.journal, a, 1, 2)
        b_events = await append(offset_store.journal, b, 1, 1)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await save_handled(offset_store, a_events[:1])
        calls: list[Callable[[], Awaitable[None]]] = [
            lambda: store.skip_event(PROJECTION, str(a), 1),  # changes only the generation
            lambda: store.set_offset(PROJECTION, SliceRange.all(), TimestampOffset.start()),
            lambda: store.reset(PROJECTION),
        ]
        for call in calls:
            loaded = await load(offset_store)
            await call()
            # Its changes touch only `b`, which no one stored: the generation refuses them.
            handled(loaded, b_events)
            with pytest.raises(ProjectionConflict):
                await store.save(PROJECTION, loaded.slices, loaded.take_changes())
            with pytest.raises(ProjectionConflict):
                await store.commit(
                    PROJECTION, loaded.slices, loaded.take_changes(), offset_store.note("no")
                )
            assert await store.load_entity(PROJECTION, str(b)) is None
            reloaded = await load(offset_store)
            assert reloaded.generation > loaded.generation
        assert await offset_store.notes() == []
        await save_handled(offset_store, b_events)  # from what the store holds now: fine
        assert await store.load_entity(PROJECTION, str(b)) is not None

    async def test_set_offset_counts_the_events_before_it_handled_and_those_after_not(
        self, offset_store: Fixture
    ) -> None:
        a, b, c = pids_in(SliceRange.all(), 3)
        journal = offset_store.journal
        a_events = await append(journal, a, 1, 2)
        (b1,) = await append(journal, b, 1, 1)
        (c1,) = await append(journal, c, 1, 1)
        a_events += await append(journal, a, 3, 1)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await save_handled(offset_store, [*a_events, b1, c1])

        # Back to b1's timestamp with b1 seen: a at 2, b at 1, c forgotten.
        offset = TimestampOffset(b1.timestamp, {str(b): 1})
        await store.set_offset(PROJECTION, SliceRange.all(), offset)
        assert await store.load_entity(PROJECTION, str(a)) == SeenEntity(
            str(a), 2, a_events[1].timestamp, a.slice
        )
        assert await store.load_entity(PROJECTION, str(b)) == SeenEntity(
            str(b), 1, b1.timestamp, b.slice
        )
        assert await store.load_entity(PROJECTION, str(c)) is None
        assert await store.offsets(PROJECTION) == {s: offset for s in SliceRange.all()}
        tracker = await load(offset_store)
        assert tracker.resume_offset() == offset
        assert tracker.validate(c1, EnvelopeSource.QUERY) is ACCEPTED

        # Only the slices given change.
        others = SliceRange(a.slice, a.slice)
        await store.set_offset(PROJECTION, others, TimestampOffset.start())
        assert await store.load_entity(PROJECTION, str(a)) is None
        if b.slice != a.slice:
            assert (await store.offsets(PROJECTION))[b.slice] == offset

    async def test_skip_event_moves_an_entity_on_never_back(self, offset_store: Fixture) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 4)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await store.skip_event(PROJECTION, str(pid), 3)
        assert await store.load_entity(PROJECTION, str(pid)) == SeenEntity(
            str(pid), 3, stored[2].timestamp, pid.slice
        )
        await store.skip_event(PROJECTION, str(pid), 1)
        assert (await store.load_entity(PROJECTION, str(pid))) == SeenEntity(
            str(pid), 3, stored[2].timestamp, pid.slice
        )
        with pytest.raises(UnknownEvent) as unknown:
            await store.skip_event(PROJECTION, str(pid), 5)
        assert (unknown.value.persistence_id, unknown.value.seq_nr) == (str(pid), 5)
        (other,) = entity_ids(OTHER_ENTITY_TYPE, SliceRange.all(), 1)
        await offset_store.journal.append(events(other, 1, 1))
        with pytest.raises(UnknownProjection):
            await store.skip_event(PROJECTION, str(other), 1)
        assert await store.load_entity(PROJECTION, str(other)) is None

    async def test_skip_event_settles_the_placeholders_it_passes(
        self, offset_store: Fixture
    ) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 4)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        tracker = handled(await load(offset_store), stored[:1])
        for placeholder in stored[1:]:
            tracker.saw_placeholder(placeholder)
        await store.save(PROJECTION, tracker.slices, tracker.take_changes())
        last = stored[3].timestamp
        assert await store.load_entity(PROJECTION, str(pid)) == SeenEntity(
            str(pid), 4, last, pid.slice, 3
        )
        await store.skip_event(PROJECTION, str(pid), 2)
        assert await store.load_entity(PROJECTION, str(pid)) == SeenEntity(
            str(pid), 4, last, pid.slice, 2
        )
        await store.skip_event(PROJECTION, str(pid), 4)
        assert await store.load_entity(PROJECTION, str(pid)) == SeenEntity(
            str(pid), 4, last, pid.slice, 0
        )

    async def test_reset_forgets_the_offsets_and_keeps_the_read_model_unless_cleared(
        self, offset_store: Fixture
    ) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 2)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        tracker = handled(await load(offset_store), stored)
        await store.commit(
            PROJECTION, tracker.slices, tracker.take_changes(), offset_store.note("kept")
        )
        await store.reset(PROJECTION)
        assert await offset_store.notes() == ["kept"]
        assert await store.offsets(PROJECTION) == {}
        assert await store.load_entity(PROJECTION, str(pid)) is None
        restarted = await load(offset_store)
        assert restarted.resume_offset() == TimestampOffset.start()
        assert restarted.validate(stored[0], EnvelopeSource.LIVE) is ACCEPTED
        await save_handled(offset_store, stored)
        await store.reset(PROJECTION, clear_read_model=offset_store.clear_notes)
        assert await offset_store.notes() == []
        assert await store.offsets(PROJECTION) == {}

    async def test_a_failing_clear_read_model_leaves_everything_as_it_was(
        self, offset_store: Fixture
    ) -> None:
        (pid,) = pids_in(SliceRange.all(), 1)
        stored = await append(offset_store.journal, pid, 1, 2)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        tracker = handled(await load(offset_store), stored[:1])
        await store.commit(
            PROJECTION, tracker.slices, tracker.take_changes(), offset_store.note("kept")
        )
        offsets = await store.offsets(PROJECTION)
        error = _UserError("cannot clear")

        def failing(txn: object) -> None:
            offset_store.clear_notes(txn)
            raise error

        with pytest.raises(_UserError) as raised:
            await store.reset(PROJECTION, clear_read_model=failing)
        assert raised.value is error
        assert await offset_store.notes() == ["kept"]
        assert await store.offsets(PROJECTION) == offsets
        # Nor did the generation change: the running instance still saves.
        handled(tracker, stored[1:])
        await store.save(PROJECTION, tracker.slices, tracker.take_changes())
        assert (await load(offset_store)).seq_nr_of(str(pid)) == 2

    async def test_backlog_counts_the_events_behind_the_stored_offsets(
        self, offset_store: Fixture
    ) -> None:
        low, high = SliceRange(0, 511), SliceRange(512, 1023)
        (a,) = pids_in(low, 1)
        (b,) = pids_in(high, 1)
        a_events = await append(offset_store.journal, a, 1, 3)
        await append(offset_store.journal, b, 1, 2)
        (other,) = entity_ids(OTHER_ENTITY_TYPE, SliceRange.all(), 1)
        await offset_store.journal.append(events(other, 1, 4))
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        assert await store.backlog(PROJECTION, ENTITY_TYPE, SliceRange.all()) == 5
        await save_handled(offset_store, a_events[:2])
        assert await store.backlog(PROJECTION, ENTITY_TYPE, SliceRange.all()) == 3
        assert await store.backlog(PROJECTION, ENTITY_TYPE, low) == 1
        assert await store.backlog(PROJECTION, ENTITY_TYPE, high) == 2

    async def test_wait_until_caught_up_waits_for_what_the_journal_held_at_the_call(
        self, offset_store: Fixture
    ) -> None:
        (a,) = pids_in(SliceRange.all(), 1)
        a_events = await append(offset_store.journal, a, 1, 2)
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        caught_up = trio.Event()

        async def wait() -> None:
            await store.wait_until_caught_up(PROJECTION)
            caught_up.set()

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                await save_handled(offset_store, a_events[:1])
                await trio.testing.wait_all_tasks_blocked()
                assert not caught_up.is_set()
                await save_handled(offset_store, a_events[1:])
                await caught_up.wait()
            await store.wait_until_caught_up(PROJECTION, SliceRange(a.slice, a.slice))
