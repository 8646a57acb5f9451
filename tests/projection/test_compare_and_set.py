"""The offset store's compare-and-set, step by step: two trackers loaded from one store (two
instances of a projection) that store changes of the same entities, changes made from a stale
memory of an entity, and changes made before a management call changed the offsets. The one
that comes second gets ProjectionConflict and nothing of it is stored, whether it saves
(at-least-once) or commits with the handler's writes (exactly-once)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import (
    Accepted,
    EnvelopeSource,
    OffsetChanges,
    OffsetTracker,
    SeenEntity,
)
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import ProjectionConflict
from fluvial.core.records import EventRecord
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from projection.projection_helpers import ENTITY_TYPE, NAME, Appender, management_calls

ALL = SliceRange.all()
WINDOW = 300 * 1_000_000
KINDS = ["save", "commit"]


def handle(tracker: OffsetTracker, *records: EventRecord) -> None:
    """What an instance does with envelopes of the query that it handles."""
    for record in records:
        assert isinstance(tracker.validate(record, EnvelopeSource.QUERY), Accepted)
        tracker.accept(record)
        tracker.passed(record)


async def store_changes(
    store: SqliteOffsetStore, kind: str, changes: OffsetChanges, marker: str
) -> None:
    """Store `changes` as an at-least-once instance does (`save`), or as an exactly-once
    one does (`commit`, with a handler's write that leaves `marker` in the read model)."""
    if kind == "save":
        await store.save(NAME, ALL, changes)
        return

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO model_order (pid, seq_nr) VALUES (?, 0)", (marker,))

    await store.commit(NAME, ALL, changes, write)


async def stored(journal: SqliteJournal) -> tuple[list[Any], list[Any], list[Any]]:
    """Everything the projection has stored: its entities, its slice offsets, its writes."""

    def query(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any]]:
        return (
            conn.execute(
                "SELECT persistence_id, seq_nr, timestamp FROM projection_entity "
                "WHERE projection_name = ? ORDER BY persistence_id",
                (NAME,),
            ).fetchall(),
            conn.execute(
                "SELECT slice, timestamp, seen FROM projection_offset WHERE projection_name = ? "
                "ORDER BY slice",
                (NAME,),
            ).fetchall(),
            conn.execute("SELECT pid FROM model_order ORDER BY n").fetchall(),
        )

    return await journal.database.read(query)


async def assert_refused(
    journal: SqliteJournal, store: SqliteOffsetStore, kind: str, changes: OffsetChanges
) -> None:
    before = await stored(journal)
    with pytest.raises(ProjectionConflict) as conflict:
        await store_changes(store, kind, changes, "second")
    assert (conflict.value.projection, conflict.value.slices) == (NAME, ALL)
    assert "stopped without writing" in str(conflict.value)
    assert await stored(journal) == before  # nothing of it, the handler's write neither


async def fresh_store(journal: SqliteJournal) -> SqliteOffsetStore:
    store = SqliteOffsetStore(journal.database)
    await store.register(NAME, ENTITY_TYPE)
    return store


async def load(store: SqliteOffsetStore) -> OffsetTracker:
    return await store.load(NAME, ALL, window=WINDOW)


@pytest.mark.parametrize("kind", KINDS)
async def test_of_two_instances_storing_one_new_entity_the_second_is_refused(
    journal: SqliteJournal, kind: str
) -> None:
    appender = Appender(journal)
    a = await appender.append("a", 1, 2)
    b = await appender.append("b", 3)
    store = await fresh_store(journal)
    first, second = await load(store), await load(store)
    handle(first, a[0])
    handle(second, *a, *b)  # a is new to it too; and b, which the first never stored
    await store_changes(store, kind, first.take_changes(), "first")
    await assert_refused(journal, store, kind, second.take_changes())
    entities, _, _ = await stored(journal)
    assert [(pid, seq_nr) for pid, seq_nr, _ in entities] == [("Counter|a", 1)]


@pytest.mark.parametrize("kind", KINDS)
async def test_of_two_instances_storing_one_known_entity_the_second_is_refused(
    journal: SqliteJournal, kind: str
) -> None:
    appender = Appender(journal)
    a = await appender.append("a", 1, 2, 3)
    b = await appender.append("b", 4)
    store = await fresh_store(journal)
    earlier = await load(store)
    handle(earlier, a[0])
    await store_changes(store, kind, earlier.take_changes(), "earlier")
    first, second = await load(store), await load(store)
    assert first.seq_nr_of("Counter|a") == second.seq_nr_of("Counter|a") == 1
    handle(first, a[1])
    handle(second, a[1], a[2], *b)
    await store_changes(store, kind, first.take_changes(), "first")
    await assert_refused(journal, store, kind, second.take_changes())
    entities, _, _ = await stored(journal)
    assert [(pid, seq_nr) for pid, seq_nr, _ in entities] == [("Counter|a", 2)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("previous", [1, 3, "not stored"])
async def test_changes_from_a_stale_previous_seq_nr_are_refused(
    journal: SqliteJournal, kind: str, previous: int | str
) -> None:
    appender = Appender(journal)
    a = await appender.append("a", 1, 2, 3)
    store = await fresh_store(journal)
    tracker = await load(store)
    handle(tracker, a[0], a[1])
    await store_changes(store, kind, tracker.take_changes(), "first")  # a is at 2
    generation = (await load(store)).generation
    if previous == "not stored":
        b = await appender.append("b", 4, 5)
        entity, before = b[1], {b[1].persistence_id: 1}
    else:
        assert isinstance(previous, int)
        entity, before = a[2], {a[2].persistence_id: previous}
    seen = SeenEntity(entity.persistence_id, entity.seq_nr, entity.timestamp, entity.slice)
    changes = OffsetChanges((seen,), {}, before, generation)
    await assert_refused(journal, store, kind, changes)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "carrying", ["slice offsets only", "new entities only", "known entities only"]
)
@pytest.mark.parametrize("call", ["reset", "set_offset", "skip_event"])
async def test_a_running_instance_cannot_undo_a_management_call(
    journal: SqliteJournal, kind: str, carrying: str, call: str
) -> None:
    appender = Appender(journal)
    a = await appender.append("a", 1, 2)
    b = await appender.append("b", 3)
    store = await fresh_store(journal)
    tracker = await load(store)
    handle(tracker, *a)
    await store_changes(store, kind, tracker.take_changes(), "first")
    running = await load(store)  # an instance that runs on while the call is made
    await management_calls(store, NAME)[call]()  # skip_event: of a#1, already handled
    if carrying == "slice offsets only":
        # Its next commit carries only the tips of its slices, as it knew them: envelopes
        # that were all duplicates, or the query passing what the live path handled.
        tips = {a[1].slice: TimestampOffset(a[1].timestamp, {a[1].persistence_id: 2})}
        changes = OffsetChanges((), tips, {}, running.generation)
    elif carrying == "new entities only":
        handle(running, *b)  # new to it, and to the store
        changes = running.take_changes()
    else:
        # The next event of an entity it knows (the call may have left that entity's row
        # as it was: skip_event of an event already handled).
        handle(running, *await appender.append("a", 4))
        changes = running.take_changes()
        assert changes.previous == {a[1].persistence_id: 2}
    await assert_refused(journal, store, kind, changes)
    # An instance that starts after the call loads its generation, and stores as usual.
    restarted = await load(store)
    handle(restarted, *b)
    await store_changes(store, kind, restarted.take_changes(), "restarted")
    entities, _, _ = await stored(journal)
    assert ("Counter|b", 1) in [(pid, seq_nr) for pid, seq_nr, _ in entities]
