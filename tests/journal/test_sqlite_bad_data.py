"""Bad data in or as a SQLite journal file is reported with its place, and never changed.

The journal hands payload bytes through untouched; decoding them (`SerializerRegistry.decode`)
raises a `DataError` naming the persistence id and seq nr, and the rows stay in the file. A
file fluvial cannot use (not a database, damaged, another application's, read-only, full, a
directory) is refused with a typed error naming it, never a raw `sqlite3` error.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from fluvial.core.errors import DataError
from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.records import EventRecord
from fluvial.core.serialization import PayloadDecodeError, SerializerRegistry, UnknownManifest
from fluvial.journal.api import JournalError
from fluvial.journal.queries import current_events_by_slices, events_by_persistence_id
from fluvial.journal.sqlite._errors import (
    JournalCannotOpen,
    JournalCorrupt,
    JournalFull,
    JournalReadOnly,
    NotAJournal,
)
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.journal.sqlite._schema import SCHEMA_VERSION
from fluvial.journal.sqlite._transaction import WriteTransaction

PID = PersistenceId("BadData", "cart-1")


@attrs.frozen
class ItemAdded:
    item_id: str
    quantity: int


def registry() -> SerializerRegistry:
    serializers = SerializerRegistry()
    serializers.register(ItemAdded, "test.ItemAdded")
    return serializers


async def write_events(path: Path, count: int) -> None:
    serializers = registry()
    async with open_sqlite_journal(path) as journal:
        await journal.append(
            [
                EventRecord(
                    persistence_id=str(PID),
                    seq_nr=seq_nr,
                    entity_type=PID.entity_type,
                    slice=PID.slice,
                    payload=serializers.encode(ItemAdded(f"item-{seq_nr}", seq_nr)),
                )
                for seq_nr in range(1, count + 1)
            ]
        )


def update_row(path: Path, seq_nr: int, column: str, value: object) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            f"UPDATE event_journal SET {column} = ? WHERE persistence_id = ? AND seq_nr = ?",
            (value, str(PID), seq_nr),
        )


def stored_rows(path: Path) -> list[tuple[int, str, int, bytes]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return list(
            conn.execute(
                "SELECT seq_nr, manifest, ser_version, payload FROM event_journal "
                "WHERE persistence_id = ? ORDER BY seq_nr",
                (str(PID),),
            )
        )


async def read_back(path: Path) -> tuple[list[EventRecord], list[EventRecord]]:
    """The records by persistence id and by slices, as recovery and projections read them."""
    async with open_sqlite_journal(path) as journal:
        by_pid = [r async for r in events_by_persistence_id(journal, str(PID))]
        by_slices = [
            r async for r in current_events_by_slices(journal, PID.entity_type, SliceRange.all())
        ]
    return by_pid, by_slices


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("payload", b"\xc1\xff\xee garbage"),  # 0xc1 is never valid msgpack
        ("payload", b""),
        ("payload", b"\x92\xa6item-2"),  # an array cut short
        ("payload", b"\xa5hello"),  # valid msgpack, but a string, not an ItemAdded
        ("payload", b"\x82\xa7item_id\x01\xa8quantity\xa1x"),  # fields of the wrong types
        ("ser_version", 99),  # written by a newer schema of the class
    ],
    ids=["garbage", "empty", "truncated", "wrong-shape", "wrong-field-types", "newer-version"],
)
async def test_an_undecodable_payload_raises_payload_decode_error_naming_its_event(
    tmp_path: Path, column: str, value: object
) -> None:
    path = tmp_path / "journal.db"
    await write_events(path, 3)
    update_row(path, 2, column, value)
    rows_before = stored_rows(path)

    serializers = registry()
    by_pid, by_slices = await read_back(path)
    assert [r.seq_nr for r in by_pid] == [1, 2, 3]
    assert by_slices == by_pid
    first, bad, third = by_pid
    assert first.payload is not None
    assert serializers.decode(first.payload, persistence_id=str(PID), seq_nr=1) == ItemAdded(
        "item-1", 1
    )
    assert bad.payload is not None
    with pytest.raises(PayloadDecodeError) as error:
        serializers.decode(bad.payload, persistence_id=bad.persistence_id, seq_nr=bad.seq_nr)
    assert isinstance(error.value, DataError)
    assert (error.value.persistence_id, error.value.seq_nr) == (str(PID), 2)
    assert error.value.manifest == "test.ItemAdded"
    assert str(PID) in str(error.value)
    assert "seq nr 2" in str(error.value)
    assert third.payload is not None
    assert serializers.decode(third.payload, persistence_id=str(PID), seq_nr=3) == ItemAdded(
        "item-3", 3
    )
    # Reading did not delete or repair anything.
    assert stored_rows(path) == rows_before


async def test_an_unknown_manifest_raises_unknown_manifest_naming_its_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    await write_events(path, 3)
    update_row(path, 3, "manifest", "test.RemovedLongAgo")
    rows_before = stored_rows(path)

    serializers = registry()
    by_pid, by_slices = await read_back(path)
    assert by_slices == by_pid
    assert [r.seq_nr for r in by_pid] == [1, 2, 3]
    bad = by_pid[2]
    assert bad.payload is not None
    assert bad.payload.manifest == "test.RemovedLongAgo"
    with pytest.raises(UnknownManifest) as error:
        serializers.decode(bad.payload, persistence_id=bad.persistence_id, seq_nr=bad.seq_nr)
    assert isinstance(error.value, DataError)
    assert (error.value.manifest, error.value.persistence_id, error.value.seq_nr) == (
        "test.RemovedLongAgo",
        str(PID),
        3,
    )
    assert str(PID) in str(error.value)
    assert "seq nr 3" in str(error.value)
    assert stored_rows(path) == rows_before
    assert len(rows_before) == 3


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


async def refused(path: Path, error_type: type[Exception]) -> Exception:
    """Open `path`, expecting `error_type`; the error, checked to name the file."""
    with pytest.raises(error_type) as error:
        async with open_sqlite_journal(path) as journal:
            await journal.read_events(str(PID), 1, 10, 10)
    assert isinstance(error.value, JournalError)
    assert not isinstance(error.value, sqlite3.Error)
    assert str(path) in str(error.value)
    return error.value


async def test_a_file_that_is_not_a_database_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(b"these are somebody's notes, not a database\n" * 200)
    before = files_in(tmp_path)
    error = await refused(path, JournalCorrupt)
    assert isinstance(error, DataError)
    assert "not a SQLite database" in str(error)
    assert files_in(tmp_path) == before


def truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep) // 4096 * 4096]


def overwritten(data: bytes, keep: float) -> bytes:
    # Pages past the schema's, overwritten with garbage: a damaged disk or a stray write.
    start = 3 * 4096
    end = int(len(data) * keep) // 4096 * 4096
    return data[:start] + b"\xa5" * (end - start) + data[end:]


@pytest.mark.parametrize(
    ("damage", "keep"),
    [(truncated, 0.5), (truncated, 0.9), (overwritten, 0.5)],
    ids=["truncated-half", "truncated-end", "overwritten"],
)
async def test_a_damaged_journal_is_reported_as_corrupt_and_left_as_it_is(
    tmp_path: Path, damage: Callable[[bytes, float], bytes], keep: float
) -> None:
    path = tmp_path / "journal.db"
    await write_events(path, 300)
    data = path.read_bytes()
    assert not (tmp_path / "journal.db-wal").exists(), "checkpointed on close"
    path.write_bytes(damage(data, keep))
    before = files_in(tmp_path)

    with pytest.raises(JournalCorrupt) as error:
        await open_and_read_all(path)
    assert isinstance(error.value, DataError)
    assert str(path) in str(error.value)
    assert "restore it from a backup" in str(error.value)
    assert files_in(tmp_path) == before


async def open_and_read_all(path: Path) -> None:
    """Open `path` and read every event; what failed, raised as itself (opening or reading)."""
    failed: Exception | None = None
    async with open_sqlite_journal(path) as journal:
        try:
            [r async for r in events_by_persistence_id(journal, str(PID))]
            [r async for r in current_events_by_slices(journal, PID.entity_type, SliceRange.all())]
        except Exception as exc:
            failed = exc
    if failed is not None:
        raise failed


async def test_a_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    error = await refused(tmp_path, JournalCannotOpen)
    assert "is a directory" in str(error)
    assert os.listdir(tmp_path) == []


async def test_a_path_in_a_missing_directory_is_refused_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    error = await refused(tmp_path / "no-such-dir" / "journal.db", JournalCannotOpen)
    assert "does not exist" in str(error)
    assert os.listdir(tmp_path) == []


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` made read-only for this process, even as root (which ignores file modes)."""
    path.chmod(0o444)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(path)], check=False).returncode:
        pytest.skip("running as root without chattr: cannot make a file read-only")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o644)


async def test_a_read_only_journal_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    await write_events(path, 3)
    rows_before = stored_rows(path)
    with read_only(path):
        before = path.read_bytes()
        error = await refused(path, JournalReadOnly)
        assert "write permission" in str(error)
        assert path.read_bytes() == before
    assert stored_rows(path) == rows_before


def another_applications_database(path: Path, *, user_version: int, application_id: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        # Its own `event_journal`, even: only its shape tells it apart.
        conn.execute("CREATE TABLE event_journal (id INTEGER PRIMARY KEY, what TEXT)")
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO event_journal (what) VALUES ('opened the shop')")
        conn.execute(f"PRAGMA user_version = {user_version}")
        conn.execute(f"PRAGMA application_id = {application_id}")


@pytest.mark.parametrize(
    ("user_version", "application_id"),
    [(0, 0), (3, 0), (SCHEMA_VERSION + 7, 0), (2, 0x12345678)],
    ids=["no-version", "a-fluvial-version", "unknown-version", "its-own-application-id"],
)
async def test_another_applications_database_is_refused_unchanged(
    tmp_path: Path, user_version: int, application_id: int
) -> None:
    path = tmp_path / "shop.db"
    another_applications_database(path, user_version=user_version, application_id=application_id)
    before = files_in(tmp_path)
    error = await refused(path, NotAJournal)
    assert isinstance(error, DataError)
    assert "not a fluvial journal" in str(error) or "another application" in str(error)
    assert "use a file of its own" in str(error)
    # Not switched to WAL, no fluvial table added: byte for byte as it was.
    assert files_in(tmp_path) == before


async def test_a_full_disk_fails_the_write_with_journal_full_and_keeps_what_was_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    serializers = registry()

    def record(seq_nr: int, size: int) -> EventRecord:
        return EventRecord(
            persistence_id=str(PID),
            seq_nr=seq_nr,
            entity_type=PID.entity_type,
            slice=PID.slice,
            payload=serializers.encode(ItemAdded("x" * size, seq_nr)),
        )

    async with open_sqlite_journal(path) as journal:
        stored = list(await journal.append([record(1, 10), record(2, 10)]))

        def page_count(txn: WriteTransaction) -> int:
            (pages,) = txn.connection.execute("PRAGMA page_count").fetchone()
            return int(pages)

        # As if the disk were full: SQLite cannot grow the file past its current size.
        pages = await journal.database.write(page_count)
        await journal.database.write(
            lambda txn: txn.connection.execute(f"PRAGMA max_page_count = {pages}")
        )
        with pytest.raises(JournalFull) as full:
            await journal.append([record(3, 200_000)])
        assert str(path) in str(full.value)
        assert "nothing of the write was stored" in str(full.value)
        assert [r async for r in events_by_persistence_id(journal, str(PID))] == stored

        # Space again: the journal carries on.
        await journal.database.write(
            lambda txn: txn.connection.execute("PRAGMA max_page_count = 1073741823")
        )
        stored += await journal.append([record(3, 200_000)])
        assert [r async for r in events_by_persistence_id(journal, str(PID))] == stored
