"""The PostgreSQL snapshot store's transactions: saving a snapshot with its event's timestamp
and tags, loading one, and the newest of each entity by slices. Each runs whole in a pool
worker thread."""

from __future__ import annotations

from typing import Any, LiteralString

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import SnapshotRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.postgres._event_rows import Connection, decode_tags, tags_json
from fluvial.journal.queries import snapshot_is_behind

_COLUMNS: LiteralString = (
    "persistence_id, seq_nr, entity_type, slice, db_timestamp, manifest, ser_version, payload, "
    "event_timestamp, tags"
)


def save_snapshot(conn: Connection, snapshot: SnapshotRecord, keep: int) -> None:
    """Store `snapshot` with the timestamp and tags of its event (those of the record if the
    journal holds no such event), and delete all but the `keep` newest of its entity."""
    pid = snapshot.persistence_id
    with conn.transaction():
        conn.execute(
            f"INSERT INTO snapshot ({_COLUMNS}) SELECT %(pid)s, %(seq_nr)s, %(entity_type)s, "
            "%(slice)s, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, "
            "%(manifest)s, %(ser_version)s, %(payload)s, "
            "coalesce(e.db_timestamp, %(event_timestamp)s), "
            "CASE WHEN e.seq_nr IS NULL THEN %(tags)s::jsonb ELSE e.tags END "
            "FROM (SELECT 1) AS one LEFT JOIN event_journal AS e "
            "ON e.persistence_id = %(pid)s AND e.seq_nr = %(seq_nr)s "
            "ON CONFLICT (persistence_id, seq_nr) DO UPDATE SET "
            "entity_type = excluded.entity_type, slice = excluded.slice, "
            "db_timestamp = excluded.db_timestamp, manifest = excluded.manifest, "
            "ser_version = excluded.ser_version, payload = excluded.payload, "
            "event_timestamp = excluded.event_timestamp, tags = excluded.tags",
            {
                "pid": pid,
                "seq_nr": snapshot.seq_nr,
                "entity_type": snapshot.entity_type,
                "slice": snapshot.slice,
                "manifest": snapshot.payload.manifest,
                "ser_version": snapshot.payload.version,
                "payload": snapshot.payload.data,
                "event_timestamp": snapshot.event_timestamp,
                "tags": tags_json(snapshot.tags),
            },
        )
        conn.execute(
            "DELETE FROM snapshot WHERE persistence_id = %s AND seq_nr NOT IN (SELECT seq_nr "
            "FROM snapshot WHERE persistence_id = %s ORDER BY seq_nr DESC LIMIT %s)",
            (pid, pid, keep),
        )


def load_snapshot(conn: Connection, persistence_id: str, max_seq_nr: int) -> SnapshotRecord | None:
    """The newest snapshot of an entity at or below `max_seq_nr`."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM snapshot WHERE persistence_id = %s AND seq_nr <= %s "
        "ORDER BY seq_nr DESC LIMIT 1",
        (persistence_id, max_seq_nr),
    ).fetchone()
    return None if row is None else _snapshot_from_row(row)


def snapshots_by_slices(
    conn: Connection, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
) -> list[SnapshotRecord]:
    """See `SnapshotStore.read_snapshots_by_slices`."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM snapshot AS s WHERE entity_type = %s "
        "AND slice BETWEEN %s AND %s AND event_timestamp >= %s AND seq_nr = "
        "(SELECT max(seq_nr) FROM snapshot WHERE persistence_id = s.persistence_id) "
        "ORDER BY event_timestamp, persistence_id LIMIT %s",
        # Those seen at exactly `after.timestamp` are read again and dropped below.
        (entity_type, slices.min, slices.max, after.timestamp, limit + len(after.seen)),
    ).fetchall()
    snapshots = [_snapshot_from_row(row) for row in rows]
    return [s for s in snapshots if snapshot_is_behind(after, s)][:limit]


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
        payload=SerializedPayload(manifest, version, bytes(data)),
        event_timestamp=event_timestamp,
        tags=decode_tags(tags),
    )
