"""The SQLite journal's writer: group commit, the entity keys it remembers, the callback form
of append, its checkpoints, and a failing write among others."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import outcome
import pytest
import trio
import trio.testing

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.core.ids import PersistenceId, SliceRange  # noqa: E402
from fluvial.core.records import EventRecord, InvalidAppend  # noqa: E402
from fluvial.journal.api import JournalConflict  # noqa: E402
from fluvial.journal.sqlite._journal import open_sqlite_journal  # noqa: E402
from fluvial.journal.sqlite._transaction import WriteTransaction  # noqa: E402
from fluvial.journal.sqlite._writer_memory import EnsuredKeys, KnownKeys  # noqa: E402
from fluvial.testing.journal_contract import (  # noqa: E402
    current_by_slices,
    entity_ids,
    event,
    events,
    read_all,
    snapshot,
)

ENTITY_TYPE = "SqliteWriter"
ALL = SliceRange.all()


async def test_appends_made_in_one_scheduler_turn_share_one_transaction(tmp_path: Path) -> None:
    """The writer gets a turn's writes at once (at the end of the turn), not the first one. A turn
    of 1,000 appends outlasts the GIL's switch interval, so a writer woken by the first one
    would commit a part of them."""
    pids = entity_ids(ENTITY_TYPE, ALL, 1000)
    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        commits_before = journal.database.commit_count()
        async with trio.open_nursery() as nursery:
            for pid in pids:
                nursery.start_soon(journal.append, events(pid, 1, 1))
        assert journal.database.commit_count() - commits_before == 1
        assert len(await current_by_slices(journal, ENTITY_TYPE, ALL)) == len(pids)


def test_a_key_ensured_by_a_write_that_was_rolled_back_is_ensured_again() -> None:
    """The writer remembers only committed entity keys: one inserted by a write that was
    undone must be inserted again by the next write that needs it."""
    ensured = EnsuredKeys("INSERT OR IGNORE INTO entity (persistence_id) VALUES (?)")
    keys = KnownKeys()
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        conn.execute("CREATE TABLE entity (id INTEGER PRIMARY KEY, persistence_id TEXT UNIQUE)")
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT write")
        mark = keys.mark()
        keys.ensure(conn, ensured, ["undone"])
        conn.execute("ROLLBACK TO write")
        keys.rolled_back_to(mark)
        conn.execute("RELEASE write")
        keys.ensure(conn, ensured, ["kept", "kept"])
        conn.execute("COMMIT")
        keys.committed()

        conn.execute("BEGIN")
        keys.ensure(conn, ensured, ["undone", "kept"])
        conn.execute("COMMIT")
        keys.committed()
        stored = [key for (key,) in conn.execute("SELECT persistence_id FROM entity ORDER BY id")]
    assert stored == ["kept", "undone"]


async def test_append_soon_answers_with_the_stored_events_or_the_conflict(
    tmp_path: Path,
) -> None:
    """The callback form of append (the entity runtime's) stores and answers as append does."""
    pid, other = entity_ids(ENTITY_TYPE, ALL, 2)
    answers: list[outcome.Outcome[Sequence[EventRecord]]] = []
    all_answered = trio.Event()

    def answer(result: outcome.Outcome[Sequence[EventRecord]]) -> None:
        answers.append(result)
        if len(answers) == 3:
            all_answered.set()

    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        await journal.append(events(pid, 1, 1))
        journal.append_soon(events(pid, 2, 2), answer)
        journal.append_soon(events(pid, 1, 2), answer)  # seq nr 1 is taken
        journal.append_soon(events(other, 1, 1), answer)
        assert answers == [], "answered only once committed"
        with trio.fail_after(10):
            await all_answered.wait()
        stored, conflict, of_other = answers
        assert stored.unwrap() == (await read_all(journal, pid))[1:]
        assert [r.seq_nr for r in await read_all(journal, pid)] == [1, 2, 3]
        with pytest.raises(JournalConflict):
            conflict.unwrap()
        assert of_other.unwrap() == await read_all(journal, other)
        with pytest.raises(InvalidAppend):  # invalid input raises at once
            journal.append_soon([*events(pid, 4, 1), *events(other, 2, 1)], answer)


async def test_the_writer_checkpoints_the_wal_long_before_sqlites_backstop(
    tmp_path: Path,
) -> None:
    """The WAL is copied back into the file between commits (most of it by the checkpointer
    thread, beside them), so the WAL restarts instead of growing to the 16,000 pages (64 MB)
    of SQLite's automatic checkpoint (test_sqlite_checkpoints.py at a lower threshold)."""
    path = tmp_path / "journal.db"
    pids = entity_ids(ENTITY_TYPE, ALL, 500)
    async with open_sqlite_journal(path) as journal:
        # 40 commits of 500 events of ~4 KB (a page each): 20,000 pages in all.
        for seq_nr in range(1, 41):
            async with trio.open_nursery() as nursery:
                for pid in pids:
                    nursery.start_soon(journal.append, [event(pid, seq_nr, data=bytes(4000))])
        wal_pages = (tmp_path / "journal.db-wal").stat().st_size // 4096
        assert len(await current_by_slices(journal, ENTITY_TYPE, ALL)) == 40 * len(pids)
    assert wal_pages < 8000


async def test_group_commit_stores_every_concurrent_append(tmp_path: Path) -> None:
    pids = entity_ids(ENTITY_TYPE, ALL, 100)
    appended: dict[str, list[EventRecord]] = {str(pid): [] for pid in pids}
    appends = 0

    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        commits_before = journal.database.commit_count()

        async def append_some(index: int) -> None:
            nonlocal appends
            pid = pids[index]
            seq_nr = 1
            for round_ in range(5):
                count = 1 + (index + round_) % 3
                appended[str(pid)] += await journal.append(events(pid, seq_nr, count))
                appends += 1
                seq_nr += count

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(len(pids)):
                    nursery.start_soon(append_some, index)

        commits = journal.database.commit_count() - commits_before
        for pid in pids:
            stored = await read_all(journal, pid)
            assert stored == appended[str(pid)]
            assert [r.seq_nr for r in stored] == list(range(1, len(stored) + 1))
        assert len(await current_by_slices(journal, ENTITY_TYPE, ALL)) == sum(
            len(records) for records in appended.values()
        )
    assert appends == 500
    assert commits < appends, "no appends were committed together"


async def test_a_failing_write_in_a_group_commit_loses_none_of_the_others(
    tmp_path: Path,
) -> None:
    """One transaction holding a conflicting append among others: only the conflict fails."""
    victim, first, second, third = entity_ids(ENTITY_TYPE, ALL, 4)
    entered, release = threading.Event(), threading.Event()

    def hold_the_writer(_txn: WriteTransaction) -> None:
        entered.set()
        release.wait(10)

    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        await journal.append(events(victim, 1, 2))
        results: dict[str, Sequence[EventRecord] | Exception] = {}

        async def append(name: str, batch: list[EventRecord]) -> None:
            try:
                results[name] = await journal.append(batch)
            except JournalConflict as exc:
                results[name] = exc

        async def save_snapshot(pid: PersistenceId, seq_nr: int) -> None:
            await journal.save_snapshot(snapshot(pid, seq_nr), keep=1)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(journal.database.write, hold_the_writer)
                await trio.to_thread.run_sync(entered.wait)
                # Queued one by one while the writer is busy, so that they form the next
                # transaction in this order: two appends, a snapshot, the conflicting append
                # on its own, another snapshot and another append.
                nursery.start_soon(append, "first", events(first, 1, 2))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(append, "second", events(second, 1, 1))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(save_snapshot, first, 2)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(append, "conflict", [event(victim, 2, data=b"rival")])
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(save_snapshot, second, 1)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(append, "third", events(third, 1, 3))
                await trio.testing.wait_all_tasks_blocked()
                release.set()

        assert isinstance(results.pop("conflict"), JournalConflict)
        assert [r.seq_nr for r in await read_all(journal, victim)] == [1, 2]
        assert (await read_all(journal, victim))[1].payload == event(victim, 2).payload
        for name, pid in [("first", first), ("second", second), ("third", third)]:
            result = results[name]
            assert not isinstance(result, Exception)
            assert await read_all(journal, pid) == list(result), f"{name} was reported stored"
        for pid, seq_nr in [(first, 2), (second, 1)]:
            loaded = await journal.load_snapshot(str(pid))
            assert loaded is not None
            assert loaded.seq_nr == seq_nr


async def test_an_opening_cancelled_at_any_point_leaves_no_thread_running(tmp_path: Path) -> None:
    # A cancel can come while the journal starts its tasks, before its body: its writer and
    # checkpointer threads run by then, and are stopped all the same.
    path = tmp_path / "journal.db"
    async with open_sqlite_journal(path):
        pass  # the file made once, so that every opening below gets as far as it can
    for step in range(40):
        with trio.move_on_after(0.0002 * step):
            async with open_sqlite_journal(path):
                await trio.sleep_forever()
    left = [t.name for t in threading.enumerate() if str(path) in t.name]
    assert left == []
