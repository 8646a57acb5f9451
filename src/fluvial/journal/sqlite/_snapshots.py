"""The SQLite snapshot store's statements: saving a snapshot with its event's timestamp and
tags, loading one, and the newest of each entity by slices. Each function runs in the thread
`SqliteDatabase` gives it (the writer's transaction, or a reader connection)."""

from __future__ import annotations

import sqlite3
from typing import Any

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import SnapshotRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.queries import snapshot_is_behind
from fluvial.journal.sqlite._event_rows import decode_tags, tags_json
from fluvial.journal.sqlite._schema import EVENTS_OF_ENTITY
from fluvial.journal.sqlite._transaction import WriteTransaction

_SNAPSHOT_COLUMNS = (
    "persistence_id, seq_nr, entity_type, slice, db_timestamp, manifest, ser_version, payload, "
    "event_timestamp, tags"
)


def save_snapshot(txn: WriteTransaction, snapshot: SnapshotRecord, keep: int) -> None:
    """Store `snapshot` with the timestamp and tags of its event (those of the record if the
    journal holds no such event), and delete all but the `keep` newest of its entity."""
    conn = txn.connection
    event = conn.execute(
        f"SELECT db_timestamp, tags FROM event_journal WHERE {EVENTS_OF_ENTITY} AND seq_nr = ?",
        (snapshot.persistence_id, snapshot.seq_nr),
    ).fetchone()
    event_timestamp, tags = event or (snapshot.event_timestamp, tags_json(snapshot.tags))
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
        "(SELECT seq_nr FROM snapshot WHERE persistence_id = ? ORDER BY seq_nr DESC LIMIT ?)",
        (snapshot.persistence_id, snapshot.persistence_id, keep),
    )


def load_snapshot(
    conn: sqlite3.Connection, persistence_id: str, max_seq_nr: int
) -> SnapshotRecord | None:
    """The newest snapshot of an entity at or below `max_seq_nr`."""
    row = conn.execute(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE persistence_id = ? AND seq_nr <= ? "
        "ORDER BY seq_nr DESC LIMIT 1",
        (persistence_id, max_seq_nr),
    ).fetchone()
    return None if row is None else _snapshot_from_row(row)


def snapshots_by_slices(
    conn: sqlite3.Connection,
    entity_type: str,
    slices: SliceRange,
    after: TimestampOffset,
    limit: int,
) -> list[SnapshotRecord]:
    """See `SnapshotStore.read_snapshots_by_slices`."""
    rows = conn.execute(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot AS s WHERE entity_type = ? "
        "AND event_timestamp >= ? AND slice BETWEEN ? AND ? AND seq_nr = "
        "(SELECT max(seq_nr) FROM snapshot WHERE persistence_id = s.persistence_id) "
        "ORDER BY event_timestamp, persistence_id LIMIT ?",
        # Those seen at exactly `after.timestamp` are read again and dropped below.
        (entity_type, after.timestamp, slices.min, slices.max, limit + len(after.seen)),
    )
    snapshots = [_snapshot_from_row(row) for row in rows]
    # Only the leading ones, at the offset's own timestamp, can have been seen.
    skip = 0
    while skip < len(snapshots) and not snapshot_is_behind(after, snapshots[skip]):
        skip += 1
    return snapshots[skip : skip + limit]


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
        tags=decode_tags(tags),
    )
