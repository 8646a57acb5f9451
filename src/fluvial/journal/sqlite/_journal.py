"""The SQLite journal and snapshot store, on a `SqliteDatabase`.

The statements live by job: event rows in _event_rows.py, snapshots in
_snapshots.py, the write of events from elsewhere in _from_elsewhere.py; this class
runs them on the database's writer and readers and tells followers what was committed.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import msgspec
import outcome
from msgspec.structs import replace

from fluvial._wakeup import Signal
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import (
    EventRecord,
    SnapshotRecord,
    check_append_batch,
    check_from_elsewhere,
)
from fluvial.journal._live import LivePublisher
from fluvial.journal.api import MAX_SEQ_NR, MAX_TIMESTAMP, EventStored, WriteFromElsewhereResult
from fluvial.journal.queries import by_slices_parameters
from fluvial.journal.sqlite._database import SqliteDatabase, open_sqlite_database
from fluvial.journal.sqlite._event_rows import (
    EVENT_COLUMNS,
    EVENT_COLUMNS_NOT_FROM_ORIGIN,
    EVENT_COLUMNS_WITHOUT_PAYLOAD,
    EVENTS_BY_SLICES,
    LATEST_EVENT_TIMESTAMP,
    event_from_row,
    insert_events,
    unseen,
)
from fluvial.journal.sqlite._file import DEFAULT_BUSY_TIMEOUT, Durability
from fluvial.journal.sqlite._from_elsewhere import FromElsewhereWrite
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.journal.sqlite._schema import EVENTS_OF_ENTITY
from fluvial.journal.sqlite._snapshots import load_snapshot, save_snapshot, snapshots_by_slices


class SqliteJournal:
    """Journal, SnapshotStore and WriteFromElsewhere on one SQLite file, with the offset
    store of its projections (`HasOffsetStore`); see `open_sqlite_journal`."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        self.live = LivePublisher()
        # Counts this journal's appends only: a follower must not wake for every offset or
        # snapshot the same file commits.
        self._appends = Signal()
        self._offset_store: SqliteOffsetStore | None = None

    def offset_store(self) -> SqliteOffsetStore:
        """The offset store of projections in this journal's file, on the wall clock (the same
        one on every call): what `serve_projection(journal, ...)` keeps offsets in unless it
        is given another store."""
        if self._offset_store is None:
            self._offset_store = SqliteOffsetStore(self.database)
        return self._offset_store

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """See `Journal.append`."""
        check_append_batch(events)
        if not events:
            return []
        first = await self.database.write(insert_events(events))
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
        self.database.write_soon(insert_events(events), _Committed(self, events, on_done))

    async def write_from_elsewhere(
        self, events: Sequence[EventRecord]
    ) -> list[WriteFromElsewhereResult]:
        """See `WriteFromElsewhere.write_from_elsewhere`."""
        check_from_elsewhere(events)
        if not events:
            return []
        write = FromElsewhereWrite(events)
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
        self._appends.notify()
        self.live.publish(stamped)
        return stamped

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        """See `Journal.read_events`."""

        def query(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM event_journal WHERE {EVENTS_OF_ENTITY} "
                "AND seq_nr BETWEEN ? AND ? ORDER BY seq_nr LIMIT ?",
                (persistence_id, from_seq_nr, to_seq_nr, limit),
            )
            return [event_from_row(row) for row in rows]

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
            columns = EVENT_COLUMNS_WITHOUT_PAYLOAD
        elif exclude_origin is not None:
            columns = EVENT_COLUMNS_NOT_FROM_ORIGIN
        else:
            columns = EVENT_COLUMNS
        parameters = by_slices_parameters(
            entity_type, slices, after, limit, to_timestamp, exclude_origin
        )

        def query(conn: sqlite3.Connection) -> list[EventRecord]:
            rows = conn.execute(EVENTS_BY_SLICES.format(columns=columns), parameters)
            return unseen(after, [event_from_row(row) for row in rows], limit)

        return await self.database.read(query)

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """See `Journal.load_event`."""

        def query(conn: sqlite3.Connection) -> EventRecord | None:
            row = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM event_journal WHERE {EVENTS_OF_ENTITY} "
                "AND seq_nr = ?",
                (persistence_id, seq_nr),
            ).fetchone()
            return None if row is None else event_from_row(row)

        return await self.database.read(query)

    async def latest_event_timestamp(self, entity_type: str, slices: SliceRange) -> int | None:
        """See `Journal.latest_event_timestamp`."""
        parameters = {"entity_type": entity_type, "min": slices.min, "max": slices.max}

        def query(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(LATEST_EVENT_TIMESTAMP, parameters).fetchone()
            return None if row is None else int(row[0])

        return await self.database.read(query)

    def append_count(self) -> int:
        """See `Journal.append_count`."""
        return self._appends.count

    async def wait_for_new_events(self, seen_append_count: int) -> None:
        """See `Journal.wait_for_new_events`."""
        # Other processes' appends wake nobody here: look again after the polling interval.
        await self._appends.wait(seen_append_count, at_most=self.database.poll_interval)

    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        """See `SnapshotStore.save_snapshot`."""
        await self.database.write(functools.partial(save_snapshot, snapshot=snapshot, keep=keep))

    async def load_snapshot(
        self, persistence_id: str, max_seq_nr: int = MAX_SEQ_NR
    ) -> SnapshotRecord | None:
        """See `SnapshotStore.load_snapshot`."""
        return await self.database.read(
            functools.partial(load_snapshot, persistence_id=persistence_id, max_seq_nr=max_seq_nr)
        )

    async def read_snapshots_by_slices(
        self, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
    ) -> list[SnapshotRecord]:
        """See `SnapshotStore.read_snapshots_by_slices`."""
        return await self.database.read(
            functools.partial(
                snapshots_by_slices,
                entity_type=entity_type,
                slices=slices,
                after=after,
                limit=limit,
            )
        )


class _Committed(msgspec.Struct, eq=False):
    """What `append_soon` does once its write is committed: one small object per append
    (a closure would be five: the function, its cells and their tuple), a Struct because it
    is built in C (a class's `__init__` is a Python call per append)."""

    journal: SqliteJournal
    events: Sequence[EventRecord]
    on_done: Callable[[outcome.Outcome[Sequence[EventRecord]]], None]

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
