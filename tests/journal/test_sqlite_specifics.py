"""What the SQLite journal promises beyond the journal contract: its file, its clock, several
writers of one file (the writer itself: test_sqlite_writer.py)."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlite_utils
import trio
import trio.testing

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.core.ids import SliceRange  # noqa: E402
from fluvial.core.records import EventRecord  # noqa: E402
from fluvial.journal.api import JournalConflict, JournalGap  # noqa: E402
from fluvial.journal.queries import events_by_slices  # noqa: E402
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal  # noqa: E402
from fluvial.journal.sqlite._schema import (  # noqa: E402
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaVersionTooNew,
)
from fluvial.testing.journal_contract import (  # noqa: E402
    current_by_slices,
    entity_ids,
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


async def test_opening_an_up_to_date_journal_and_reading_changes_no_byte_of_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    async with open_sqlite_journal(path) as journal:
        stored = await journal.append(events(pid, 1, 3))
    before = path.read_bytes()
    async with open_sqlite_journal(path) as journal:
        assert await read_all(journal, pid) == list(stored)
    assert path.read_bytes() == before


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
        # The version vector was the opaque `metadata` blob until the replication columns.
        current = columns.replace("metadata", "version_vector")
        rows = conn.execute(f"SELECT {current} FROM event_journal").fetchall()
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
