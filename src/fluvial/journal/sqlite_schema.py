"""The SQLite schema, created and migrated with sqlite-utils, versioned by `PRAGMA user_version`.

Each migration moves the schema from version `i` to `i + 1`; a file whose version is newer than
this code knows is refused, never touched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from fluvial.journal.api import JournalError


class SchemaVersionTooNew(JournalError):
    """The database file was written by a newer fluvial; upgrade fluvial to open it."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            f"{path} has schema version {found}, newer than this fluvial supports "
            f"({supported}); upgrade fluvial to open it (the file was not modified)"
        )
        self.path = path
        self.found = found
        self.supported = supported


def _v1_journal_and_snapshots(db: sqlite_utils.Database) -> None:
    db["event_journal"].create(  # type: ignore[union-attr]
        {
            "persistence_id": str,
            "seq_nr": int,
            "entity_type": str,
            "slice": int,
            # Microseconds since the epoch, strictly increasing per writer (see SqliteDatabase).
            "db_timestamp": int,
            "tags": str,  # JSON array, NULL when untagged: filters match on it later
            "manifest": str,
            "ser_version": int,
            "payload": bytes,
            # Reserved for replication: origin replica, origin seq nr, version vector.
            "metadata": bytes,
        },
        pk=("persistence_id", "seq_nr"),
        not_null={"persistence_id", "seq_nr", "entity_type", "slice", "db_timestamp"},
    )
    db["event_journal"].create_index(  # type: ignore[union-attr]
        ["entity_type", "db_timestamp"], index_name="event_journal_by_time"
    )
    db["snapshot"].create(  # type: ignore[union-attr]
        {
            "persistence_id": str,
            "seq_nr": int,
            "entity_type": str,
            "slice": int,
            "db_timestamp": int,
            "manifest": str,
            "ser_version": int,
            "payload": bytes,
        },
        pk=("persistence_id", "seq_nr"),
        not_null={"persistence_id", "seq_nr", "entity_type", "slice", "db_timestamp"},
    )

    # The last timestamp handed out by any writer of this file. Writers take it inside their
    # (serialized) write transaction, so timestamps increase across processes too.
    db["journal_clock"].insert({"id": 0, "last_timestamp": 0}, pk="id")  # type: ignore[union-attr]


def _v2_projection_offsets(db: sqlite_utils.Database) -> None:
    # Keyed by slice, not by slice range, so that instances with other ranges (after a
    # rescale) resume from exactly what their slices had reached.
    db["projection_offset"].create(  # type: ignore[union-attr]
        {"projection_name": str, "slice": int, "timestamp": int, "seen": str},
        pk=("projection_name", "slice"),
        not_null={"projection_name", "slice", "timestamp", "seen"},
    )
    db["projection_entity"].create(  # type: ignore[union-attr]
        {
            "projection_name": str,
            "persistence_id": str,
            "slice": int,
            "seq_nr": int,
            "timestamp": int,
        },
        pk=("projection_name", "persistence_id"),
        not_null={"projection_name", "persistence_id", "slice", "seq_nr", "timestamp"},
    )
    db["projection_entity"].create_index(  # type: ignore[union-attr]
        ["projection_name", "slice", "timestamp"], index_name="projection_entity_by_time"
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_journal_and_snapshots,
    _v2_projection_offsets,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema of `conn` to SCHEMA_VERSION, or raise SchemaVersionTooNew."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            raise SchemaVersionTooNew(path, found, SCHEMA_VERSION)
        db = sqlite_utils.Database(conn)
        for migration in MIGRATIONS[found:]:
            migration(db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
