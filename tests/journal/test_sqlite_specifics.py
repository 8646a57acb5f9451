"""What the SQLite journal promises beyond the journal contract: its file, clock and writer."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import outcome
import pytest
import sqlite_utils
import trio
import trio.testing

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.core.ids import PersistenceId, SliceRange  # noqa: E402
from fluvial.core.records import EventRecord, InvalidAppend  # noqa: E402
from fluvial.journal.api import JournalConflict, JournalGap  # noqa: E402
from fluvial.journal.queries import events_by_slices  # noqa: E402
from fluvial.journal.sqlite_journal import SqliteJournal, open_sqlite_journal  # noqa: E402
from fluvial.journal.sqlite_schema import (  # noqa: E402
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaVersionTooNew,
)
from fluvial.journal.sqlite_transaction import WriteTransaction  # noqa: E402
from fluvial.journal.sqlite_writer_memory import EnsuredKeys, KnownKeys  # noqa: E402
from fluvial.testing.journal_contract import (  # noqa: E402
    current_by_slices,
    entity_ids,
    event,
    events,
    read_all,
    snapshot,
    timestamp_order,
)

ENTITY_TYPE = "Sqlite"
ALL = SliceRange.all()


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        return int(version)


def file_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def move_newest_event_to(path: Path, timestamp: int) -> None:
    """As if the newest event had been written by a host whose clock is ahead."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE event_journal SET db_timestamp = ? "
            "WHERE db_timestamp = (SELECT max(db_timestamp) FROM event_journal)",
            (timestamp,),
        )


def an_hour_from_now() -> int:
    return (time.time_ns() // 1000) + 3_600_000_000


async def _fluvial_file(path: Path) -> None:
    async with open_sqlite_journal(path) as journal:
        await journal.append(events(entity_ids(ENTITY_TYPE, ALL, 1)[0], 1, 2))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


async def _plain_file(path: Path) -> None:
    # Rollback-journal mode and tables of its own, as a future fluvial may write (it marks
    # its files with fluvial's application id, as this one does).
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE future_events (id INTEGER PRIMARY KEY, body BLOB)")
        conn.execute("INSERT INTO future_events (body) VALUES (x'00ff')")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


@pytest.mark.parametrize("make_file", [_fluvial_file, _plain_file], ids=["wal", "rollback"])
async def test_a_file_with_a_newer_schema_is_refused_and_left_unchanged(
    tmp_path: Path, make_file: Callable[[Path], Awaitable[None]]
) -> None:
    path = tmp_path / "future.db"
    await make_file(path)
    before = path.read_bytes()
    files_before = file_names(tmp_path)

    with pytest.raises(SchemaVersionTooNew) as refused:
        async with open_sqlite_journal(path):
            pytest.fail("a file from a newer fluvial was opened")

    assert (refused.value.found, refused.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert str(path) in str(refused.value)
    assert path.read_bytes() == before
    assert file_names(tmp_path) == files_before
    assert user_version(path) == SCHEMA_VERSION + 1


async def test_reopening_a_file_keeps_its_events_and_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first, second = entity_ids(ENTITY_TYPE, ALL, 2)
    async with open_sqlite_journal(path) as journal:
        stored = [*await journal.append(events(first, 1, 3))]
        stored += await journal.append(events(second, 1, 2))
        await journal.save_snapshot(snapshot(first, 3), keep=1)
    assert user_version(path) == SCHEMA_VERSION

    async with open_sqlite_journal(path) as journal:
        assert await current_by_slices(journal, ENTITY_TYPE, ALL) == stored
        assert await journal.highest_seq_nr(str(first)) == 3
        loaded = await journal.load_snapshot(str(first))
        assert loaded is not None
        assert loaded.payload == snapshot(first, 3).payload
        more = await journal.append(events(first, 4, 1))
        assert more[0].timestamp > max(r.timestamp for r in stored)
        with pytest.raises(JournalConflict):
            await journal.append(events(second, 2, 1))
        assert await read_all(journal, first) == [*stored[:3], *more]


async def test_a_file_of_schema_version_2_is_migrated_with_its_events(tmp_path: Path) -> None:
    """v3 stores the events in commit order and v5 indexes them by an integer entity key; a
    v2 file (events keyed by persistence id) keeps them, and its entities' seq nrs."""
    path = tmp_path / "journal.db"
    first, second = entity_ids(ENTITY_TYPE, ALL, 2)
    async with open_sqlite_journal(path) as journal:
        stored = [*await journal.append(events(first, 1, 3))]
        stored += await journal.append(events(second, 1, 2))
    columns = (
        "persistence_id, seq_nr, entity_type, slice, db_timestamp, tags, manifest, ser_version, "
        "payload, metadata"
    )
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        rows = conn.execute(f"SELECT {columns} FROM event_journal").fetchall()
    v2 = tmp_path / "v2.db"
    with contextlib.closing(sqlite3.connect(v2, isolation_level=None)) as conn:
        database = sqlite_utils.Database(conn)
        for migration in MIGRATIONS[:2]:
            migration(database)
        conn.execute("PRAGMA user_version = 2")
        placeholders = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO event_journal ({columns}) VALUES ({placeholders})", rows)

    async with open_sqlite_journal(v2) as journal:
        assert await current_by_slices(journal, ENTITY_TYPE, ALL) == stored
        with pytest.raises(JournalConflict):
            await journal.append(events(second, 2, 1))
        more = await journal.append(events(first, 4, 1))
        assert await read_all(journal, first) == [*stored[:3], *more]
    assert user_version(v2) == SCHEMA_VERSION


async def test_timestamps_keep_increasing_when_the_files_clock_is_ahead_of_the_wall_clock(
    tmp_path: Path,
) -> None:
    # E.g. the wall clock was set back, or the file was written on a host whose clock is ahead.
    path = tmp_path / "journal.db"
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    async with open_sqlite_journal(path) as journal:
        await journal.append(events(pid, 1, 1))
    ahead = an_hour_from_now()
    move_newest_event_to(path, ahead)

    async with open_sqlite_journal(path) as journal:
        stored = await journal.append(events(pid, 2, 3))
        stored = [*stored, *await journal.append(events(pid, 5, 1))]
    assert [r.timestamp for r in stored] == [ahead + 1, ahead + 2, ahead + 3, ahead + 4]


async def test_two_journals_on_one_file_hand_out_strictly_increasing_timestamps(
    tmp_path: Path,
) -> None:
    """Two writers of one file (as two processes would be) share the file's clock."""
    path = tmp_path / "journal.db"
    *pids, first_pid = entity_ids(ENTITY_TYPE, ALL, 21)
    async with open_sqlite_journal(path) as journal:
        await journal.append(events(first_pid, 1, 1))
    # With the file's clock ahead of the wall clock, only what each writer reads from the file
    # keeps the two apart.
    move_newest_event_to(path, an_hour_from_now())

    async with open_sqlite_journal(path) as one, open_sqlite_journal(path) as two:
        in_turn = await read_all(one, first_pid)
        for n in range(1, 7):
            writer = one if n % 2 else two
            in_turn += await writer.append(events(pids[n % 3], (n + 2) // 3, 1))
        timestamps = [r.timestamp for r in in_turn]
        assert timestamps == sorted(set(timestamps)), "not strictly increasing"

        concurrent: list[EventRecord] = []

        async def append_all(writer_index: int, pid_index: int) -> None:
            writer = (one, two)[writer_index]
            pid = pids[pid_index]
            for first in range(1, 10, 3):
                concurrent.extend(await writer.append(events(pid, first, 3)))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(3, len(pids)):
                    nursery.start_soon(append_all, index % 2, index)

        everything = [*in_turn, *concurrent]
        assert len({r.timestamp for r in everything}) == len(everything), "a timestamp repeats"
        assert min(r.timestamp for r in concurrent) > max(timestamps)
        assert timestamps[0] > time.time_ns() // 1000, "the file's clock is ahead"
        for reader in (one, two):
            assert await current_by_slices(reader, ENTITY_TYPE, ALL) == timestamp_order(everything)
        for pid in pids[3:]:
            assert [r.seq_nr for r in await read_all(one, pid)] == list(range(1, 10))


async def test_the_gap_check_sees_what_another_writer_of_the_file_appended(
    tmp_path: Path,
) -> None:
    """The writer remembers each entity's highest seq nr; another connection's commit (as
    another process's would be) makes it read them again."""
    path = tmp_path / "journal.db"
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    async with open_sqlite_journal(path) as one, open_sqlite_journal(path) as two:
        await one.append(events(pid, 1, 2))  # `one` now remembers 2
        await two.append(events(pid, 3, 1))
        await one.append(events(pid, 4, 2))  # follows 3, not the 2 `one` saw
        with pytest.raises(JournalGap):
            await two.append(events(pid, 7, 1))  # `two` remembers 3, but 5 is stored
        with pytest.raises(JournalConflict):
            await two.append(events(pid, 5, 1))
        await two.append(events(pid, 6, 1))
        with pytest.raises(JournalConflict):
            await one.append(events(pid, 6, 1))
        assert [r.seq_nr for r in await read_all(one, pid)] == [1, 2, 3, 4, 5, 6]


async def _follow(journal: SqliteJournal, send: trio.MemorySendChannel[EventRecord]) -> None:
    query = events_by_slices(journal, ENTITY_TYPE, ALL)
    async with contextlib.aclosing(query) as stream:
        async for record in stream:
            await send.send(record)


async def test_a_follower_sees_what_another_writer_of_the_file_appends(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    send, receive = trio.open_memory_channel[EventRecord](math.inf)
    async with (
        open_sqlite_journal(path) as writer,
        open_sqlite_journal(path, poll_interval=0.05) as follower,
    ):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_follow, follower, send)
                first = await writer.append(events(pid, 1, 2))
                assert [await receive.receive() for _ in first] == list(first)
                second = await writer.append(events(pid, 3, 1))
                assert await receive.receive() == second[0]
                nursery.cancel_scope.cancel()


async def test_a_follower_is_woken_by_a_commit_in_its_own_process_without_polling(
    tmp_path: Path,
) -> None:
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    send, receive = trio.open_memory_channel[EventRecord](math.inf)
    # Polling once an hour: only the writer's own signal can deliver within the timeout.
    async with open_sqlite_journal(tmp_path / "journal.db", poll_interval=3600) as journal:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_follow, journal, send)
                for seq_nr in range(1, 4):
                    await trio.testing.wait_all_tasks_blocked()
                    stored = await journal.append(events(pid, seq_nr, 1))
                    assert await receive.receive() == stored[0]
                nursery.cancel_scope.cancel()


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
    """Between commits the writer copies the WAL back into the file, so the WAL restarts
    instead of growing to the 16,000 pages (64 MB) of SQLite's automatic checkpoint."""
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


async def test_power_loss_durability_syncs_fully_and_keeps_events(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    full = 2  # PRAGMA synchronous: 1 = NORMAL, 2 = FULL

    def synchronous(conn: sqlite3.Connection) -> int:
        (level,) = conn.execute("PRAGMA synchronous").fetchone()
        return int(level)

    async with open_sqlite_journal(path, durability="power-loss") as journal:
        assert await journal.database.write(lambda txn: synchronous(txn.connection)) == full
        assert await journal.database.read(synchronous) == full
        stored = await journal.append(events(pid, 1, 3))
        assert await read_all(journal, pid) == list(stored)
    async with open_sqlite_journal(path) as journal:
        assert await journal.database.read(synchronous) == 1
        assert await read_all(journal, pid) == list(stored)
