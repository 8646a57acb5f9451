"""An exactly-once handler's transaction is its own: handed to the writer together with other
callers' writes (entity appends, snapshots), it commits after them, so a handler that fails
undoes only its own writes and the offsets that came with it, and a slow one does not delay
the others' answers."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio
import trio.testing

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, OffsetChanges
from fluvial.core.records import EventRecord
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.journal.sqlite._transaction import WriteTransaction
from projection.projection_helpers import (
    ENTITY_TYPE,
    NAME,
    Appender,
    model_size,
    stored_seq_nr,
)

ALL = SliceRange.all()


async def _handed_over_together(
    journal: SqliteJournal,
    appender: Appender,
    store: SqliteOffsetStore,
    changes: OffsetChanges,
    handler: Callable[[sqlite3.Connection], None],
    appended: threading.Event | None = None,
) -> dict[str, outcome.Outcome[Any]]:
    """Queue two appends and an exactly-once commit running `handler` while the writer is
    busy, so that the writer takes all three at once; each call's outcome. `appended` is set
    once both appends were answered."""
    entered, release = threading.Event(), threading.Event()

    def hold_the_writer(_txn: WriteTransaction) -> None:
        entered.set()
        release.wait(10)

    results: dict[str, outcome.Outcome[Any]] = {}

    async def call(name: str, write: Any) -> None:
        results[name] = await outcome.acapture(write)
        if appended is not None and {"before", "after"} <= results.keys():
            appended.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.database.write, hold_the_writer)
            await trio.to_thread.run_sync(entered.wait)
            nursery.start_soon(call, "before", lambda: appender.append("before", 1, 2))
            nursery.start_soon(call, "handler", lambda: store.commit(NAME, ALL, changes, handler))
            nursery.start_soon(call, "after", lambda: appender.append("after", 3))
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    return results


async def _one_change(
    journal: SqliteJournal, appender: Appender
) -> tuple[SqliteOffsetStore, OffsetChanges, EventRecord]:
    (record,) = await appender.append("projected", 1)
    store = SqliteOffsetStore(journal.database)
    await store.register(NAME, ENTITY_TYPE)
    tracker = await store.load(NAME, ALL, window=300 * 1_000_000)
    tracker.validate(record, EnvelopeSource.QUERY)
    tracker.accept(record)
    tracker.passed(record)
    return store, tracker.take_changes(), record


async def test_a_failing_handler_in_a_group_commit_undoes_only_itself(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    store, changes, record = await _one_change(journal, appender)

    def failing_handler(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO model VALUES (?, 1, 1, 1)", (record.persistence_id,))
        raise ValueError("handler fails")

    results = await _handed_over_together(journal, appender, store, changes, failing_handler)

    failed = results.pop("handler")
    assert {name: len(r.unwrap()) for name, r in results.items()} == {"before": 2, "after": 1}
    assert isinstance(failed, outcome.Error)
    assert isinstance(failed.error, ValueError)  # as itself
    assert await journal.highest_seq_nr(appender.pid("before")) == 2
    assert await journal.highest_seq_nr(appender.pid("after")) == 1
    assert await model_size(journal) == 0
    assert await stored_seq_nr(journal, record.persistence_id) == 0
    # The handler's next attempt commits on its own.
    await store.commit(NAME, ALL, changes, lambda conn: None)
    assert await stored_seq_nr(journal, record.persistence_id) == 1


async def test_a_slow_handler_does_not_delay_the_appends_handed_over_with_it(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    store, changes, record = await _one_change(journal, appender)
    appended = threading.Event()
    saw_the_appends_answered: list[bool] = []

    def slow_handler(conn: sqlite3.Connection) -> None:
        # Riding in the appends' transaction, they could not be answered before it returns.
        saw_the_appends_answered.append(appended.wait(5))
        conn.execute("INSERT INTO model VALUES (?, 1, 1, 1)", (record.persistence_id,))

    results = await _handed_over_together(journal, appender, store, changes, slow_handler, appended)
    assert saw_the_appends_answered == [True]
    assert all(isinstance(r, outcome.Value) for r in results.values())
    assert await model_size(journal) == 1
    assert await stored_seq_nr(journal, record.persistence_id) == 1
