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
from fluvial.core.records import (
    EventRecord,
    SnapshotRecord,
    check_append_batch,
    check_from_elsewhere,
)
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import (
    MAX_SEQ_NR,
    MAX_TIMESTAMP,
    EventAlreadyStored,
    EventGap,
    EventStored,
    JournalConflict,
    JournalGap,
    WriteFromElsewhereResult,
)
from fluvial.journal.live import LivePublisher
from fluvial.journal.queries import snapshot_is_behind
from fluvial.journal.sqlite_database import SqliteDatabase, open_sqlite_database
from fluvial.journal.sqlite_file import DEFAULT_BUSY_TIMEOUT, Durability
from fluvial.journal.sqlite_schema import EVENTS_OF_ENTITY
from fluvial.journal.sqlite_transaction import RowInsert, WriteTransaction
from fluvial.journal.sqlite_writer_memory import EnsuredKeys, SeqNrCheck

# What a read returns of each event, in `_event_from_row`'s order. A write_timestamp is stored
# only for events written elsewhere first: those written here were written at db_timestamp.
_EVENT_COLUMNS = (
    "persistence_id, seq_nr, entity_type, slice, db_timestamp, tags, manifest, ser_version, "
    "payload, coalesce(write_timestamp, db_timestamp), origin_replica, origin_seq_nr, "
    "version_vector"
)
# The same without payloads: SQLite then does not read their bytes (nor their overflow pages).
_EVENT_COLUMNS_WITHOUT_PAYLOAD = _EVENT_COLUMNS.replace(
    "manifest, ser_version, payload", "NULL, NULL, NULL"
)
# The same with the payloads of the events of one origin replica (`:origin`) left out: a NULL
# manifest makes a record without payload.
_EVENT_COLUMNS_NOT_FROM_ORIGIN = _EVENT_COLUMNS.replace(
    "manifest, ser_version, payload",
    "iif(origin_replica IS :origin, NULL, manifest), ser_version, "
    "iif(origin_replica IS :origin, NULL, payload)",
)
# The timestamp goes last: the writer appends it to each row (see `RowInsert`). The entity's
# integer key comes from the `entity` table, where the writer makes sure it exists
# (`_ENTITY_KEYS`). Events of this journal's own entities leave the replication columns NULL,
# so they bind four values fewer (`_INSERT_EVENT`); the others take `_INSERT_TRACED_EVENT`.
_INSERT_EVENT = (
    "INSERT INTO event_journal (entity_id, persistence_id, seq_nr, entity_type, slice, tags, "
    "manifest, ser_version, payload, db_timestamp) VALUES "
    "((SELECT id FROM entity WHERE persistence_id = ?1), ?1,?2,?3,?4,?5,?6,?7,?8,?9)"
)
_INSERT_TRACED_EVENT = (
    "INSERT INTO event_journal (entity_id, persistence_id, seq_nr, entity_type, slice, tags, "
    "manifest, ser_version, payload, write_timestamp, origin_replica, origin_seq_nr, "
    "version_vector, db_timestamp) VALUES "
    "((SELECT id FROM entity WHERE persistence_id = ?1), ?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,"
    "?12,?13)"
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


def _tags_json(tags: frozenset[str]) -> str | None:
    # NULL when untagged: most events are, and NULL costs a byte.
    return _json_encode(sorted(tags)).decode() if tags else None


def _conflict(rows: list[tuple[Any, ...]]) -> Exception:
    # The entity's first row: persistence_id and seq_nr lead every row (see _event_row).
    return JournalConflict(rows[0][0], rows[0][1])


def _insert_events(events: Sequence[EventRecord]) -> RowInsert:
    for record in events:
        if record.replication is not None or record.write_timestamp:
            rows = [_traced_event_row(e) for e in events]
            return RowInsert(_INSERT_TRACED_EVENT, rows, _conflict, _ENTITY_KEYS, _FOLLOWS_STORED)
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
        _tags_json(record.tags),
        payload.manifest if payload else None,
        payload.version if payload else None,
        payload.data if payload else None,
    )


def _traced_event_row(record: EventRecord) -> tuple[Any, ...]:
    """The row of an event with replication metadata or a write timestamp of its own."""
    replication = record.replication
    return (
        *_event_row(record),
        record.write_timestamp or None,
        replication.origin_replica if replication else None,
        replication.origin_seq_nr if replication else None,
        replication.version_vector.to_json() if replication else None,
    )


def _event_from_row(row: tuple[Any, ...]) -> EventRecord:
    (
        pid,
        seq_nr,
        entity_type,
        slice_,
        timestamp,
        tags,
        manifest,
        version,
        data,
        write_timestamp,
        origin_replica,
        origin_seq_nr,
        version_vector,
    ) = row
    return EventRecord(
        persistence_id=pid,
        seq_nr=seq_nr,
        entity_type=entity_type,
        slice=slice_,
        timestamp=timestamp,
        write_timestamp=write_timestamp,
        tags=frozenset(_json_decode_tags(tags)) if tags else frozenset(),
        payload=SerializedPayload(manifest, version, data) if manifest is not None else None,
        replication=None
        if origin_replica is None
        else ReplicationMetadata(
            origin_replica, origin_seq_nr, VersionVector.from_json(version_vector)
        ),
    )


class SqliteJournal:
    """Journal, SnapshotStore and WriteFromElsewhere on one SQLite file; see
    `open_sqlite_journal`."""

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

    async def write_from_elsewhere(
        self, events: Sequence[EventRecord]
    ) -> list[WriteFromElsewhereResult]:
        """See `WriteFromElsewhere.write_from_elsewhere`."""
        check_from_elsewhere(events)
        if not events:
            return []
        write = _WriteFromElsewhere(events)
        first = await self.database.write(write)
        stamped = iter(self._appended_at(write.stored, first) if write.stored else [])
        return [
            EventStored(next(stamped)) if verdict is None else verdict for verdict in write.verdicts
        ]

    def _appended_at(self, events: Sequence[EventRecord], first: int) -> list[EventRecord]:
        """`events` as stored from timestamp `first` on; tells followers and live subscribers."""
        stamped = [
            replace(e, timestamp=first + i, write_timestamp=e.write_timestamp or first + i)
            for i, e in enumerate(events)
        ]
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
        self,
        entity_type: str,
        slices: SliceRange,
        after: TimestampOffset,
        limit: int,
        *,
        to_timestamp: int = MAX_TIMESTAMP,
        with_payloads: bool = True,
        exclude_origin: str | None = None,
    ) -> list[EventRecord]:
        """See `Journal.read_events_by_slices`."""
        if not with_payloads:
            columns = _EVENT_COLUMNS_WITHOUT_PAYLOAD
        elif exclude_origin is not None:
            columns = _EVENT_COLUMNS_NOT_FROM_ORIGIN
        else:
            columns = _EVENT_COLUMNS
        parameters = {
            "entity_type": entity_type,
            "from": after.timestamp,
            "to": to_timestamp,
            "min": slices.min,
            "max": slices.max,
            # Records seen at exactly `after.timestamp` are re-read and dropped here, so ask
            # for that many more to still return up to `limit` new ones.
            "limit": limit + len(after.seen),
            "origin": exclude_origin,
        }

        def query(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                f"SELECT {columns} FROM event_journal WHERE entity_type = :entity_type "
                "AND db_timestamp BETWEEN :from AND :to AND slice BETWEEN :min AND :max "
                # Timestamps are unique in a file (FileClock), so this order is total and
                # the index delivers it without sorting what lies behind the page.
                "ORDER BY db_timestamp LIMIT :limit",
                parameters,
            )
            return _unseen(after, [_event_from_row(row) for row in rows], limit)

        return await self.database.read(query)

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """See `Journal.load_event`."""

        def query(conn: sqlite3.Connection) -> EventRecord | None:
            row = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM event_journal WHERE {EVENTS_OF_ENTITY} "
                "AND seq_nr = ?",
                (persistence_id, seq_nr),
            ).fetchone()
            return None if row is None else _event_from_row(row)

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
            conn = txn.connection
            event = conn.execute(
                f"SELECT db_timestamp, tags FROM event_journal WHERE {EVENTS_OF_ENTITY} "
                "AND seq_nr = ?",
                (snapshot.persistence_id, snapshot.seq_nr),
            ).fetchone()
            event_timestamp, tags = event or (snapshot.event_timestamp, _tags_json(snapshot.tags))
            conn.execute(
                "INSERT OR REPLACE INTO snapshot (persistence_id, seq_nr, entity_type, slice, "
                "db_timestamp, manifest, ser_version, payload, event_timestamp, tags) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    snapshot.persistence_id,
                    snapshot.seq_nr,
                    snapshot.entity_type,
                    snapshot.slice,
                    txn.next_timestamp(),
                    snapshot.payload.manifest,
                    snapshot.payload.version,
                    snapshot.payload.data,
                    event_timestamp,
                    tags,
                ),
            )
            conn.execute(
                "DELETE FROM snapshot WHERE persistence_id = ? AND seq_nr NOT IN "
                "(SELECT seq_nr FROM snapshot WHERE persistence_id = ? "
                "ORDER BY seq_nr DESC LIMIT ?)",
                (snapshot.persistence_id, snapshot.persistence_id, keep),
            )

        await self.database.write(save)

    async def load_snapshot(
        self, persistence_id: str, max_seq_nr: int = MAX_SEQ_NR
    ) -> SnapshotRecord | None:
        """See `SnapshotStore.load_snapshot`."""

        def query(conn: sqlite3.Connection) -> SnapshotRecord | None:
            row = conn.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE persistence_id = ? "
                "AND seq_nr <= ? ORDER BY seq_nr DESC LIMIT 1",
                (persistence_id, max_seq_nr),
            ).fetchone()
            return None if row is None else _snapshot_from_row(row)

        return await self.database.read(query)

    async def read_snapshots_by_slices(
        self, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
    ) -> list[SnapshotRecord]:
        """See `SnapshotStore.read_snapshots_by_slices`."""

        def query(conn: sqlite3.Connection) -> list[SnapshotRecord]:
            rows = conn.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot AS s WHERE entity_type = ? "
                "AND event_timestamp >= ? AND slice BETWEEN ? AND ? AND seq_nr = "
                "(SELECT max(seq_nr) FROM snapshot WHERE persistence_id = s.persistence_id) "
                "ORDER BY event_timestamp, persistence_id LIMIT ?",
                (entity_type, after.timestamp, slices.min, slices.max, limit + len(after.seen)),
            )
            return _unseen_snapshots(after, [_snapshot_from_row(row) for row in rows], limit)

        return await self.database.read(query)


_SNAPSHOT_COLUMNS = (
    "persistence_id, seq_nr, entity_type, slice, db_timestamp, manifest, ser_version, payload, "
    "event_timestamp, tags"
)


def _snapshot_from_row(row: tuple[Any, ...]) -> SnapshotRecord:
    pid, seq_nr, entity_type, slice_, timestamp, manifest, version, data, event_timestamp, tags = (
        row
    )
    return SnapshotRecord(
        persistence_id=pid,
        seq_nr=seq_nr,
        entity_type=entity_type,
        slice=slice_,
        timestamp=timestamp,
        payload=SerializedPayload(manifest, version, data),
        event_timestamp=event_timestamp,
        tags=frozenset(_json_decode_tags(tags)) if tags else frozenset(),
    )


def _unseen(after: TimestampOffset, records: list[EventRecord], limit: int) -> list[EventRecord]:
    """The first `limit` of `records` (in timestamp order) that `after` has not seen: only
    the leading ones, at the offset's own timestamp, can have been."""
    skip = 0
    while skip < len(records) and not after.is_behind(records[skip]):
        skip += 1
    return records[skip : skip + limit]


def _unseen_snapshots(
    after: TimestampOffset, snapshots: list[SnapshotRecord], limit: int
) -> list[SnapshotRecord]:
    """`_unseen` for snapshots, which stand at their event's timestamp."""
    skip = 0
    while skip < len(snapshots) and not snapshot_is_behind(after, snapshots[skip]):
        skip += 1
    return snapshots[skip : skip + limit]


class _WriteFromElsewhere:
    """The writer's part of `write_from_elsewhere`: which events follow their entity's stored
    ones (the writer's remembered seq nrs, kept up to date), inserting those in one statement.

    Returns the first timestamp of the stored events; leaves in `verdicts` the answer for each
    event (None for a stored one, whose record the caller stamps) and in `stored` those
    stored. Both are filled again if the writer runs it again (after a rollback).
    """

    def __init__(self, events: Sequence[EventRecord]) -> None:
        self.events = events
        self.verdicts: list[EventAlreadyStored | EventGap | None] = []
        self.stored: list[EventRecord] = []

    def __call__(self, txn: WriteTransaction) -> int:
        self.verdicts, self.stored = [], []
        highest: dict[str, int] = {}
        for record in self.events:
            pid = record.persistence_id
            known = highest.get(pid)
            if known is None:
                known = highest[pid] = txn.highest_seq_nr(_FOLLOWS_STORED, pid)
            if record.seq_nr <= known:
                self.verdicts.append(EventAlreadyStored(pid, record.seq_nr))
            elif record.seq_nr == known + 1:
                self.verdicts.append(None)
                self.stored.append(record)
                highest[pid] = record.seq_nr
            else:
                self.verdicts.append(EventGap(pid, record.seq_nr, known))
        if not self.stored:
            return 0
        first = txn.next_timestamps(len(self.stored))
        txn.ensure_keys(_ENTITY_KEYS, (record.persistence_id for record in self.stored))
        txn.connection.executemany(
            _INSERT_TRACED_EVENT,
            [(*_traced_event_row(r), first + i) for i, r in enumerate(self.stored)],
        )
        for pid in dict.fromkeys(record.persistence_id for record in self.stored):
            txn.appended(pid, highest[pid])
        return first


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
