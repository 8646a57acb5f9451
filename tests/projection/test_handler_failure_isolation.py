"""An exactly-once handler's transaction shares the writer's group commit with other callers'
writes (entity appends, snapshots): a handler that fails there undoes only its own writes and
the offsets that came with it, and the others' writes commit in that same transaction, their
callers answered by it, with no wait for the projection's retry."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import outcome
import trio
import trio.testing

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource
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


async def test_a_failing_handler_in_a_group_commit_undoes_only_itself(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    (record,) = await appender.append("projected", 1)
    store = SqliteOffsetStore(journal.database)
    await store.register(NAME, ENTITY_TYPE)
    tracker = await store.load(NAME, ALL, window=300 * 1_000_000)
    tracker.validate(record, EnvelopeSource.QUERY)
    tracker.accept(record)
    tracker.passed(record)
    changes = tracker.take_changes()

    def failing_handler(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO model VALUES (?, 1, 1, 1)", (record.persistence_id,))
        raise ValueError("handler fails")

    entered, release = threading.Event(), threading.Event()

    def hold_the_writer(_txn: WriteTransaction) -> None:
        entered.set()
        release.wait(10)

    results: dict[str, outcome.Outcome[Any]] = {}
    commit_seen: dict[str, int] = {}

    async def call(name: str, write: Any) -> None:
        results[name] = await outcome.acapture(write)
        commit_seen[name] = journal.database.commit_count()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.database.write, hold_the_writer)
            await trio.to_thread.run_sync(entered.wait)
            # Queued while the writer is busy: one transaction, the handler's amid appends.
            nursery.start_soon(call, "before", lambda: appender.append("before", 1, 2))
            nursery.start_soon(
                call, "handler", lambda: store.commit(NAME, ALL, changes, failing_handler)
            )
            nursery.start_soon(call, "after", lambda: appender.append("after", 3))
            await trio.testing.wait_all_tasks_blocked()
            release.set()

    failed = results.pop("handler")
    assert {name: len(r.unwrap()) for name, r in results.items()} == {"before": 2, "after": 1}
    assert len(set(commit_seen.values())) == 1, "answered by one commit"
    assert isinstance(failed, outcome.Error)
    assert isinstance(failed.error, ValueError)  # as itself
    assert await journal.highest_seq_nr(appender.pid("before")) == 2
    assert await journal.highest_seq_nr(appender.pid("after")) == 1
    assert await model_size(journal) == 0
    assert await stored_seq_nr(journal, record.persistence_id) == 0
    # The handler's next attempt commits on its own.
    await store.commit(NAME, ALL, changes, lambda conn: None)
    assert await stored_seq_nr(journal, record.persistence_id) == 1
