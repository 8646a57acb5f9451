"""The SQLite journal and snapshot store, on a `SqliteDatabase`."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgspec
import outcome
import trio
from msgspec.structs import replace

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord, SnapshotRecord, check_append_batch
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import JournalConflict, JournalGap
from fluvial.journal.live import LivePublisher
from fluvial.journal.sqlite_database import SqliteDatabase, open_sqlite_database
from fluvial.journal.sqlite_file import DEFAULT_BUSY_TIMEOUT, Durability
from fluvial.journal.sqlite_schema import EVENTS_OF_ENTITY
from fluvial.journal.sqlite_transaction import RowInsert, WriteTransaction
from fluvial.journal.sqlite_writer_memory import EnsuredKeys, SeqNrCheck

_EVENT_COLUMNS = (
    "persistence_id, seq_nr, entity_type, slice, db_timestamp, tags, manifest, ser_version, "
    "payload, metadata"
)
# The timestamp goes last: the writer appends it to each row (see `RowInsert`). The entity's
# integer key comes from the `entity` table, where the writer makes sure it exists
# (`_ENTITY_KEYS`).
_INSERT_EVENT = (
    "INSERT INTO event_journal (entity_id, persistence_id, seq_nr, entity_type, slice, tags, "
    "manifest, ser_version, payload, metadata, db_timestamp) VALUES "
    "((SELECT id FROM entity WHERE persistence_id = ?1), ?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
)
_ENTITY_KEYS = EnsuredKeys("INSERT OR IGNORE INTO entity (persistence_id) VALUES (?)")
# An append must start right after the entity's highest stored seq nr; the writer remembers
# that of each entity it has written, so this query runs once per entity (and again after
# another process has written the file).
_FOLLOWS_STORED = SeqNrCheck(
    f"SELECT coalesce(max(seq_nr), 0) FROM event_journal WHERE {EVENTS_OF_ENTITY}", JournalGap
)
_json_encode = msgspec.json.Encoder().encode
_json_decode_tags = msgspec.json.Decoder(list[str]).decode


def _conflict(rows: list[tuple[Any, ...]]) -> Exception:
    # The entity's first row: persistence_id and seq_nr lead every row (see _event_row).
    return JournalConflict(rows[0][0], rows[0][1])


def _insert_events(events: Sequence[EventRecord]) -> RowInsert:
    return RowInsert(
        _INSERT_EVENT, [_event_row(e) for e in events], _conflict, _ENTITY_KEYS, _FOLLOWS_STORED
    )


def _event_row(record: EventRecord) -> tuple[Any, ...]:
    payload = record.payload
    return (
        record.persistence_id,
        record.seq_nr,
        record.entity_type,
        record.slice,
        _json_encode(sorted(record.tags)).decode() if record.tags else None,
        payload.manifest if payload else None,
        payload.version if payload else None,
        payload.data if payload else None,
        record.metadata,
    )


def _event_from_row(row: tuple[Any, ...]) -> EventRecord:
    pid, seq_nr, entity_type, slice_, timestamp, tags, manifest, version, data, metadata = row
    return EventRecord(
        persistence_id=pid,
        seq_nr=seq_nr,
        entity_type=entity_type,
        slice=slice_,
        timestamp=timestamp,
        tags=frozenset(_json_decode_tags(tags)) if tags else frozenset(),
        payload=SerializedPayload(manifest, version, data) if manifest is not None else None,
        metadata=metadata or b"",
    )


class SqliteJournal:
    """Journal and SnapshotStore on one SQLite file; see `open_sqlite_journal`."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        self.live = LivePublisher()
        # Counts this journal's appends only: a follower must not wake for every offset or
        # snapshot the same file commits. The event exists only while a follower waits.
        self._appends = 0
        self._appended: trio.Event | None = None

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """See `Journal.append`."""
        check_append_batch(events)
        if not events:
            return []
        first = await self.database.write(_insert_events(events))
        return self._appended_at(events, first)

    def append_soon(
        self,
        events: Sequence[EventRecord],
        on_done: Callable[[outcome.Outcome[Sequence[EventRecord]]], None],
    ) -> None:
        """See `AppendSoon.append_soon`."""
        check_append_batch(events)
        if not events:
            on_done(outcome.Value([]))
            return
        self.database.write_soon(_insert_events(events), _Committed(self, events, on_done))

    def _appended_at(self, events: Sequence[EventRecord], first: int) -> list[EventRecord]:
        """`events` as stored from timestamp `first` on; tells followers and live subscribers."""
        stamped = [replace(e, timestamp=first + i) for i, e in enumerate(events)]
        self._appends += 1
        if self._appended is not None:
            self._appended.set()
            self._appended = None
        self.live.publish(stamped)
        return stamped

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        """See `Journal.read_events`."""

        def query(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM event_journal WHERE {EVENTS_OF_ENTITY} "
                "AND seq_nr BETWEEN ? AND ? ORDER BY seq_nr LIMIT ?",
                (persistence_id, from_seq_nr, to_seq_nr, limit),
            )
            return [_event_from_row(row) for row in rows]

        return await self.database.read(query)

    async def highest_seq_nr(self, persistence_id: str) -> int:
        """See `Journal.highest_seq_nr`."""

        def query(conn: sqlite3.Connection) -> int:
            (highest,) = conn.execute(
                f"SELECT coalesce(max(seq_nr), 0) FROM event_journal WHERE {EVENTS_OF_ENTITY}",
                (persistence_id,),
            ).fetchone()
            return int(highest)

        return await self.database.read(query)

    async def read_events_by_slices(
        self, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
    ) -> list[EventRecord]:
        """See `Journal.read_events_by_slices`."""

        # Records seen at exactly `after.timestamp` are re-read and dropped here, so ask for
        # that many more to still return up to `limit` new ones.
        def query(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM event_journal WHERE entity_type = ? "
                "AND db_timestamp >= ? AND slice BETWEEN ? AND ? "
                # Timestamps are unique in a file (FileClock), so this order is total and
                # the index delivers it without sorting what lies behind the page.
                "ORDER BY db_timestamp LIMIT ?",
                (entity_type, after.timestamp, slices.min, slices.max, limit + len(after.seen)),
            )
            records = [_event_from_row(row) for row in rows]
            # Only the leading records, at the offset's own timestamp, can have been seen.
            skip = 0
            while skip < len(records) and not after.is_behind(records[skip]):
                skip += 1
            return records[skip : skip + limit]

        return await self.database.read(query)

    def append_count(self) -> int:
        """See `Journal.append_count`."""
        return self._appends

    async def wait_for_new_events(self, seen_append_count: int) -> None:
        """See `Journal.wait_for_new_events`."""
        if self._appends != seen_append_count:
            await trio.lowlevel.checkpoint()
            return
        # Other processes' appends wake nobody here: look again after the polling interval.
        if self._appended is None:
            self._appended = trio.Event()
        with trio.move_on_after(self.database.poll_interval):
            await self._appended.wait()

    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        """See `SnapshotStore.save_snapshot`."""

        def save(txn: WriteTransaction) -> None:
            txn.connection.execute(
                "INSERT OR REPLACE INTO snapshot (persistence_id, seq_nr, entity_type, slice, "
                "db_timestamp, manifest, ser_version, payload) VALUES (?,?,?,?,?,?,?,?)",
                (
                    snapshot.persistence_id,
                    snapshot.seq_nr,
                    snapshot.entity_type,
                    snapshot.slice,
                    txn.next_timestamp(),
                    snapshot.payload.manifest,
                    snapshot.payload.version,
                    snapshot.payload.data,
                ),
            )
            txn.connection.execute(
                "DELETE FROM snapshot WHERE persistence_id = ? AND seq_nr NOT IN "
                "(SELECT seq_nr FROM snapshot WHERE persistence_id = ? "
                "ORDER BY seq_nr DESC LIMIT ?)",
                (snapshot.persistence_id, snapshot.persistence_id, keep),
            )

        await self.database.write(save)

    async def load_snapshot(
        self, persistence_id: str, max_seq_nr: int = 2**63 - 1
    ) -> SnapshotRecord | None:
        """See `SnapshotStore.load_snapshot`."""

        def query(conn: sqlite3.Connection) -> SnapshotRecord | None:
            row = conn.execute(
                "SELECT persistence_id, seq_nr, entity_type, slice, db_timestamp, manifest, "
                "ser_version, payload FROM snapshot WHERE persistence_id = ? AND seq_nr <= ? "
                "ORDER BY seq_nr DESC LIMIT 1",
                (persistence_id, max_seq_nr),
            ).fetchone()
            if row is None:
                return None
            pid, seq_nr, entity_type, slice_, timestamp, manifest, version, data = row
            return SnapshotRecord(
                persistence_id=pid,
                seq_nr=seq_nr,
                entity_type=entity_type,
                slice=slice_,
                timestamp=timestamp,
                payload=SerializedPayload(manifest, version, data),
            )

        return await self.database.read(query)


class _Committed:
    """What `append_soon` does once its write is committed: one small object per append
    (a closure would be five: the function, its cells and their tuple)."""

    __slots__ = ("events", "journal", "on_done")

    def __init__(
        self,
        journal: SqliteJournal,
        events: Sequence[EventRecord],
        on_done: Callable[[outcome.Outcome[Sequence[EventRecord]]], None],
    ) -> None:
        self.journal = journal
        self.events = events
        self.on_done = on_done

    def __call__(self, result: outcome.Outcome[int]) -> None:
        if isinstance(result, outcome.Value):
            self.on_done(outcome.Value(self.journal._appended_at(self.events, result.value)))
        else:
            assert isinstance(result, outcome.Error)
            self.on_done(outcome.Error(result.error))


def open_sqlite_journal(
    path: str | Path,
    *,
    durability: Durability = "process",
    poll_interval: float = 0.5,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    readers: int = 4,
) -> AbstractAsyncContextManager[SqliteJournal]:
    """Open the SQLite journal (and snapshot store) in the file at `path`.

    See `open_sqlite_database` for the arguments and what opening raises: arguments that
    cannot work raise UsageError here, before the file is touched.
    """
    database = open_sqlite_database(
        path,
        durability=durability,
        poll_interval=poll_interval,
        busy_timeout=busy_timeout,
        readers=readers,
    )
    return _open_sqlite_journal(database)


@contextlib.asynccontextmanager
async def _open_sqlite_journal(
    opening: AbstractAsyncContextManager[SqliteDatabase],
) -> AsyncIterator[SqliteJournal]:
    async with opening as database:
        yield SqliteJournal(database)
