"""The SQLite offset store of projections, in the same file as the journal.

Offsets live next to the events and the handlers' own tables, so an exactly-once handler's
writes and the offsets that say "handled" commit in one transaction (`save_changes` runs inside
the writer's transaction). Rows are keyed by projection name and slice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import msgspec

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offset_tracker import OffsetChanges, OffsetTracker, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.journal.sqlite_database import SqliteDatabase
from fluvial.journal.sqlite_schema import EVENTS_OF_ENTITY
from fluvial.journal.sqlite_transaction import WriteTransaction

_encode_seen = msgspec.json.Encoder().encode
_decode_seen = msgspec.json.Decoder(dict[str, int]).decode


def save_changes(conn: sqlite3.Connection, projection: str, changes: OffsetChanges) -> None:
    """Persist `changes` with `conn`, inside the caller's transaction."""
    if changes.entities:
        conn.executemany(
            "INSERT OR REPLACE INTO projection_entity "
            "(projection_name, persistence_id, slice, seq_nr, timestamp) VALUES (?,?,?,?,?)",
            [
                (projection, e.persistence_id, e.slice, e.seq_nr, e.timestamp)
                for e in changes.entities
            ],
        )
    if changes.slice_offsets:
        _save_slice_offsets(conn, projection, changes.slice_offsets)


def _save_slice_offsets(
    conn: sqlite3.Connection, projection: str, offsets: Mapping[int, TimestampOffset]
) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO projection_offset (projection_name, slice, timestamp, seen) "
        "VALUES (?,?,?,?)",
        [
            (projection, slice_, o.timestamp, _encode_seen(dict(o.seen)).decode())
            for slice_, o in offsets.items()
        ],
    )


class SqliteOffsetStore:
    """Loads and saves projection offsets; also the management API (`offsets`, `backlog`,
    `set_offset`, `skip_event`, `reset`)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def load(self, projection: str, slices: SliceRange, *, window: int) -> OffsetTracker:
        """The tracker of `projection` over `slices`, holding the entities seen within
        `window` microseconds before the resume point (older ones stay in the store)."""

        def query(conn: sqlite3.Connection) -> OffsetTracker:
            offsets = _read_slice_offsets(conn, projection, slices)
            tracker = OffsetTracker(slices, slice_offsets=offsets, window=window)
            horizon = tracker.resume_offset().timestamp - window
            rows = conn.execute(
                "SELECT persistence_id, seq_nr, timestamp, slice FROM projection_entity "
                "WHERE projection_name = ? AND slice BETWEEN ? AND ? AND timestamp >= ?",
                (projection, slices.min, slices.max, horizon),
            ).fetchall()
            (any_older,) = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM projection_entity WHERE projection_name = ? "
                "AND slice BETWEEN ? AND ? AND timestamp < ?)",
                (projection, slices.min, slices.max, horizon),
            ).fetchone()
            return OffsetTracker(
                slices,
                slice_offsets=offsets,
                entities=[SeenEntity(*row) for row in rows],
                window=window,
                complete=not any_older,
            )

        return await self.database.read(query)

    async def load_entity(self, projection: str, persistence_id: str) -> SeenEntity | None:
        slice_ = slice_for(persistence_id)

        def query(conn: sqlite3.Connection) -> SeenEntity | None:
            row = conn.execute(
                "SELECT persistence_id, seq_nr, timestamp, slice FROM projection_entity "
                "WHERE projection_name = ? AND slice = ? AND persistence_id = ?",
                (projection, slice_, persistence_id),
            ).fetchone()
            return SeenEntity(*row) if row else None

        return await self.database.read(query)

    async def save(self, projection: str, changes: OffsetChanges) -> None:
        if changes.empty:
            return

        def write(txn: WriteTransaction) -> None:
            save_changes(txn.connection, projection, changes)

        await self.database.write(write)

    # -- management ---------------------------------------------------------------------------
    async def offsets(
        self, projection: str, slices: SliceRange | None = None
    ) -> dict[int, TimestampOffset]:
        """The stored offset of every slice of `projection` (in `slices`) that has one."""

        def query(conn: sqlite3.Connection) -> dict[int, TimestampOffset]:
            return _read_slice_offsets(conn, projection, slices or SliceRange.all())

        return await self.database.read(query)

    async def backlog(self, projection: str, entity_type: str, slices: SliceRange) -> int:
        """How many events of `entity_type` in `slices` are behind the journal head for
        `projection` (per slice from its stored offset; all events where none is stored)."""

        def query(conn: sqlite3.Connection) -> int:
            offsets = _read_slice_offsets(conn, projection, slices)
            total = 0
            rows = conn.execute(
                "SELECT slice, count(*) FROM event_journal WHERE entity_type = ? "
                "AND slice BETWEEN ? AND ? GROUP BY slice",
                (entity_type, slices.min, slices.max),
            ).fetchall()
            for slice_, count in rows:
                offset = offsets.get(slice_)
                if offset is None:
                    total += count
                    continue
                (behind,) = conn.execute(
                    "SELECT count(*) FROM event_journal WHERE entity_type = ? AND slice = ? "
                    "AND db_timestamp > ?",
                    (entity_type, slice_, offset.timestamp),
                ).fetchone()
                total += behind
            return total

        return await self.database.read(query)

    async def set_offset(
        self, projection: str, slices: SliceRange, offset: TimestampOffset
    ) -> None:
        """Resume every slice in `slices` from `offset`: the events the journal holds before
        it count as handled and those after it as not, so each entity's first event after
        `offset` is the next one handled, whichever path (query, live, backtracking) brings
        it. Moving an offset back makes the projection handle the events after it again.

        It records, per entity of those slices, its last seq nr before `offset` (the
        projection's memory of each entity is what tells a duplicate from a gap)."""

        def write(txn: WriteTransaction) -> None:
            conn = txn.connection
            conn.execute(
                "DELETE FROM projection_entity WHERE projection_name = ? AND slice BETWEEN ? AND ?",
                (projection, slices.min, slices.max),
            )
            conn.execute(
                "INSERT INTO projection_entity "
                "(projection_name, persistence_id, slice, seq_nr, timestamp) "
                "SELECT ?, persistence_id, slice, max(seq_nr), max(db_timestamp) "
                "FROM event_journal WHERE slice BETWEEN ? AND ? AND db_timestamp < ? "
                "GROUP BY persistence_id",
                (projection, slices.min, slices.max, offset.timestamp),
            )
            for pid, seq_nr in offset.seen.items():  # seen at the offset's own timestamp
                conn.execute(
                    "INSERT INTO projection_entity "
                    "(projection_name, persistence_id, slice, seq_nr, timestamp) "
                    "SELECT ?, persistence_id, slice, seq_nr, db_timestamp FROM event_journal "
                    f"WHERE {EVENTS_OF_ENTITY} AND seq_nr = ? AND slice BETWEEN ? AND ? "
                    "ON CONFLICT (projection_name, slice, persistence_id) DO UPDATE SET "
                    "seq_nr = max(seq_nr, excluded.seq_nr), "
                    "timestamp = max(timestamp, excluded.timestamp)",
                    (projection, pid, seq_nr, slices.min, slices.max),
                )
            _save_slice_offsets(conn, projection, {s: offset for s in slices})

        await self.database.write(write)

    async def skip_event(self, projection: str, persistence_id: str, seq_nr: int) -> None:
        """Mark an entity's events up to `seq_nr` as handled, e.g. to get past a poison
        event. Never moves an entity backwards."""

        def write(txn: WriteTransaction) -> None:
            row = txn.connection.execute(
                f"SELECT slice, db_timestamp FROM event_journal WHERE {EVENTS_OF_ENTITY} "
                "AND seq_nr = ?",
                (persistence_id, seq_nr),
            ).fetchone()
            if row is None:
                raise LookupError(f"no event {persistence_id} seq nr {seq_nr} in the journal")
            slice_, timestamp = row
            txn.connection.execute(
                "INSERT INTO projection_entity (projection_name, persistence_id, slice, seq_nr,"
                " timestamp) VALUES (?,?,?,?,?)"
                " ON CONFLICT (projection_name, slice, persistence_id)"
                " DO UPDATE SET seq_nr = max(seq_nr, excluded.seq_nr),"
                " timestamp = max(timestamp, excluded.timestamp)",
                (projection, persistence_id, slice_, seq_nr, timestamp),
            )

        await self.database.write(write)

    async def reset(self, projection: str) -> None:
        """Forget everything of `projection`: it starts again from the first event."""

        def write(txn: WriteTransaction) -> None:
            for table in ("projection_offset", "projection_entity"):
                txn.connection.execute(
                    f"DELETE FROM {table} WHERE projection_name = ?", (projection,)
                )

        await self.database.write(write)


def _read_slice_offsets(
    conn: sqlite3.Connection, projection: str, slices: SliceRange
) -> dict[int, TimestampOffset]:
    rows = conn.execute(
        "SELECT slice, timestamp, seen FROM projection_offset WHERE projection_name = ? "
        "AND slice BETWEEN ? AND ?",
        (projection, slices.min, slices.max),
    )
    return {s: TimestampOffset(ts, _decode_seen(seen)) for s, ts, seen in rows}
