"""The migration that keeps placeholders: a file of the version before it keeps its
projections' entities (seen as handled, as that version stored them) and stores placeholders
from then on."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import sqlite_utils

from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.offset_tracker import OffsetChanges, SeenEntity
from fluvial.journal.sqlite import SqliteOffsetStore, open_sqlite_journal
from fluvial.journal.sqlite._schema import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    _projection_entity_placeholders,
)

# The version a file has just before this migration (its place in MIGRATIONS may move).
PREVIOUS = MIGRATIONS.index(_projection_entity_placeholders)
PID = PersistenceId("Migrated", "cart-1")


def _write_previous_version(path: Path) -> None:
    """A file of version PREVIOUS with one projection that has handled PID up to seq nr 4."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        for migration in MIGRATIONS[:PREVIOUS]:
            migration(sqlite_utils.Database(conn))
        conn.execute(
            "INSERT INTO projection (projection_name, entity_type) VALUES ('p', ?)",
            (PID.entity_type,),
        )
        conn.execute(
            "INSERT INTO projection_entity (projection_name, slice, persistence_id, seq_nr, "
            "timestamp) VALUES ('p', ?, ?, 4, 1000)",
            (PID.slice, str(PID)),
        )
        conn.execute(f"PRAGMA user_version = {PREVIOUS}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")


async def test_a_file_of_the_previous_version_keeps_its_entities_and_stores_placeholders(
    tmp_path: Path,
) -> None:
    path = tmp_path / "previous.db"
    _write_previous_version(path)
    async with open_sqlite_journal(path) as journal:
        store = SqliteOffsetStore(journal.database)
        assert await store.load_entity("p", str(PID)) == SeenEntity(str(PID), 4, 1000, PID.slice)
        tracker = await store.load("p", SliceRange.all(), window=10**12)
        later = SeenEntity(str(PID), 6, 2000, PID.slice, placeholders=2)
        changes = OffsetChanges((later,), {}, {str(PID): 4}, tracker.generation)
        await store.save("p", SliceRange.all(), changes)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert version == SCHEMA_VERSION
    async with open_sqlite_journal(path) as journal:  # stored, not only in memory
        assert await SqliteOffsetStore(journal.database).load_entity("p", str(PID)) == later
