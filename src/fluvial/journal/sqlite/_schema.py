"""The SQLite schema, created and migrated with sqlite-utils, versioned by `PRAGMA user_version`.

Each migration moves the schema from version `i` to `i + 1`; a file whose version is newer than
this code knows is refused, never touched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from fluvial.journal.api import JournalError
from fluvial.journal.sqlite._errors import NotAJournal


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
    # v3 replaces this table (see there); files of v1 and v2 are migrated.
    db.execute(
        """CREATE TABLE event_journal (
            persistence_id TEXT NOT NULL,
            seq_nr INTEGER NOT NULL,
            entity_type TEXT NOT NULL,
            slice INTEGER NOT NULL,
            -- microseconds since the epoch, strictly increasing per file (see journal_clock)
            db_timestamp INTEGER NOT NULL,
            tags TEXT,  -- JSON array, NULL when untagged: filters match on it later
            manifest TEXT,
            ser_version INTEGER,
            payload BLOB,
            metadata BLOB,  -- reserved for replication: origin replica, version vector
            PRIMARY KEY (persistence_id, seq_nr)
        ) WITHOUT ROWID"""
    )
    db.table("event_journal").create_index(
        ["entity_type", "db_timestamp"], index_name="event_journal_by_time"
    )
    db.table("snapshot").create(
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

    # The last timestamp handed out by any writer of this file (until v4: see there).
    db.table("journal_clock").insert({"id": 0, "last_timestamp": 0}, pk="id")


def _v2_projection_offsets(db: sqlite_utils.Database) -> None:
    # Keyed by slice, not by slice range, so that instances with other ranges (after a
    # rescale) resume from exactly what their slices had reached.
    db.table("projection_offset").create(
        {"projection_name": str, "slice": int, "timestamp": int, "seen": str},
        pk=("projection_name", "slice"),
        not_null={"projection_name", "slice", "timestamp", "seen"},
    )
    # The highest seq nr handled per entity: written for every page a projection commits,
    # so clustered by its key and with no other index (a range of slices is a key prefix).
    db.execute(
        """CREATE TABLE projection_entity (
            projection_name TEXT NOT NULL,
            slice INTEGER NOT NULL,
            persistence_id TEXT NOT NULL,
            seq_nr INTEGER NOT NULL,
            timestamp INTEGER NOT NULL,
            PRIMARY KEY (projection_name, slice, persistence_id)
        ) WITHOUT ROWID"""
    )


def _v3_journal_in_commit_order(db: sqlite_utils.Database) -> None:
    # Events stored in commit order, keyed by their timestamp (unique per file: see FileClock),
    # with (persistence_id, seq_nr) as a unique index. Keyed by entity (v1), a transaction of
    # 1,000 entities' events dirtied ~1,000 table pages; now the rows go to the table's last
    # pages and only the small index entries land all over: raw inserts of that shape went
    # from ~49,000 to ~85,000 rows/s. The by-slices query reads rows in table order too.
    db.execute(
        """CREATE TABLE event_journal_v3 (
            -- microseconds since the epoch, strictly increasing per file (see journal_clock)
            db_timestamp INTEGER PRIMARY KEY,
            persistence_id TEXT NOT NULL,
            seq_nr INTEGER NOT NULL,
            entity_type TEXT NOT NULL,
            slice INTEGER NOT NULL,
            tags TEXT,  -- JSON array, NULL when untagged: filters match on it later
            manifest TEXT,
            ser_version INTEGER,
            payload BLOB,
            metadata BLOB  -- reserved for replication: origin replica, version vector
        )"""
    )
    columns = (
        "db_timestamp, persistence_id, seq_nr, entity_type, slice, tags, manifest, "
        "ser_version, payload, metadata"
    )
    db.execute(
        f"INSERT INTO event_journal_v3 ({columns}) SELECT {columns} FROM event_journal "
        "ORDER BY db_timestamp"
    )
    db.execute("DROP TABLE event_journal")
    db.execute("ALTER TABLE event_journal_v3 RENAME TO event_journal")
    db.table("event_journal").create_index(
        ["persistence_id", "seq_nr"], index_name="event_journal_by_entity", unique=True
    )
    db.table("event_journal").create_index(
        ["entity_type", "db_timestamp"], index_name="event_journal_by_time"
    )


def _v4_clock_is_the_newest_event(db: sqlite_utils.Database) -> None:
    # The writer takes its clock from the newest event (a seek to the table's last row), and
    # only when another connection has written the file (`PRAGMA data_version`). Keeping a
    # clock row cost every transaction a SELECT and an UPDATE, and a page written to the WAL.
    db.execute("DROP TABLE journal_clock")


def _v5_integer_entity_keys(db: sqlite_utils.Database) -> None:
    # The per-entity index keyed by a small integer instead of the persistence id: a commit of
    # 1,000 entities' events writes an index entry in ~1,000 places, and entries of ~16 instead
    # of ~37 bytes spread over fewer pages, so fewer pages go to the WAL and the checkpoint
    # copies fewer back. Raw inserts on a 200,000-event journal: ~13 -> ~10 us a row.
    db.execute("CREATE TABLE entity (id INTEGER PRIMARY KEY, persistence_id TEXT NOT NULL UNIQUE)")
    db.execute(
        "INSERT INTO entity (persistence_id) SELECT DISTINCT persistence_id FROM event_journal"
    )
    db.execute("ALTER TABLE event_journal ADD COLUMN entity_id INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE event_journal SET entity_id = "
        "(SELECT id FROM entity WHERE entity.persistence_id = event_journal.persistence_id)"
    )
    db.execute("DROP INDEX event_journal_by_entity")
    db.execute("CREATE UNIQUE INDEX event_journal_by_entity ON event_journal (entity_id, seq_nr)")


def _v6_projection_registry_and_leases(db: sqlite_utils.Database) -> None:
    # The projections this file knows, with the entity type each consumes and the version of
    # its read model's migrations: management calls refuse names that are not here. Projections
    # of older files are those with stored entities (the entity type prefixes the pid).
    # `generation` counts the management calls that changed a projection's offsets: every
    # save of a running instance compares it with the one it loaded.
    db.execute(
        """CREATE TABLE projection (
            projection_name TEXT PRIMARY KEY,
            entity_type TEXT NOT NULL,
            read_model_version INTEGER NOT NULL DEFAULT 0,
            generation INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute(
        "INSERT INTO projection (projection_name, entity_type) SELECT projection_name, "
        "min(substr(persistence_id, 1, instr(persistence_id, '|') - 1)) "
        "FROM projection_entity GROUP BY projection_name"
    )
    # One owner per projection and slice range: a running instance renews its row; a row
    # whose `expires_at` (seconds, on the offset store's clock) has passed can be taken over.
    db.execute(
        """CREATE TABLE projection_lease (
            projection_name TEXT NOT NULL,
            slice_min INTEGER NOT NULL,
            slice_max INTEGER NOT NULL,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (projection_name, slice_min, slice_max)
        )"""
    )


# The condition that selects one entity's events by its integer key (schema v5), with the
# persistence id as its one parameter: queries use it to go through event_journal_by_entity.
EVENTS_OF_ENTITY = "entity_id = (SELECT id FROM entity WHERE persistence_id = ?)"


def _replication_metadata_and_snapshot_events(db: sqlite_utils.Database) -> None:
    # Typed replication metadata instead of an opaque blob. The blob column, never written
    # with anything but b"" or NULL, becomes the version vector (JSON text; `origin_replica`
    # NULL means "not replicated", so the old rows' empty blobs are never read): a rename
    # edits the schema only, where dropping a column rewrites every row of a big file.
    # `origin_replica` is a column of its own so that a producer can filter on it in SQL
    # ("don't send an event back to its origin"); `write_timestamp` is the origin's time of
    # events written from elsewhere, NULL for events written here (it is their db_timestamp).
    db.execute("ALTER TABLE event_journal RENAME COLUMN metadata TO version_vector")
    db.execute("ALTER TABLE event_journal ADD COLUMN write_timestamp INTEGER")
    db.execute("ALTER TABLE event_journal ADD COLUMN origin_replica TEXT")
    db.execute("ALTER TABLE event_journal ADD COLUMN origin_seq_nr INTEGER")
    # The by-slices index holds the slice: the query tests it on the index entry and reads
    # only the rows of its slices. The slice goes after the timestamp, not before it: ordered
    # by timestamp within an entity type, the index delivers a slice range in timestamp order
    # (slice first, a range of slices is that many runs to merge, and SQLite sorts every
    # event after the offset to return one page), and a commit's entries still land at its
    # end instead of at ~1,000 places.
    db.execute("DROP INDEX event_journal_by_time")
    db.table("event_journal").create_index(
        ["entity_type", "db_timestamp", "slice"], index_name="event_journal_by_slices"
    )
    # A snapshot keeps the timestamp and tags of the event it was taken at, so that a stream
    # can start from it in that event's place; those of a file's snapshots come from their
    # events (a snapshot whose event is not stored keeps 0 and no tags).
    db.execute("ALTER TABLE snapshot ADD COLUMN event_timestamp INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE snapshot ADD COLUMN tags TEXT")
    snapshots_event = (
        "FROM event_journal WHERE event_journal.seq_nr = snapshot.seq_nr AND "
        "entity_id = (SELECT id FROM entity WHERE persistence_id = snapshot.persistence_id)"
    )
    db.execute(
        f"UPDATE snapshot SET (event_timestamp, tags) = (SELECT db_timestamp, tags "
        f"{snapshots_event}) WHERE EXISTS (SELECT 1 {snapshots_event})"
    )
    db.table("snapshot").create_index(
        ["entity_type", "event_timestamp", "slice"], index_name="snapshot_by_slices"
    )


def _projection_entity_placeholders(db: sqlite_utils.Database) -> None:
    # How many of an entity's highest seq nrs a projection saw only as placeholders (events
    # a filter dropped), so that a replay of them after a restart is handled, not dropped as
    # a duplicate (`SeenEntity.placeholders`). Rows of older files saw none: 0. Adding a
    # column with a constant default edits the schema only, no row is rewritten.
    db.execute("ALTER TABLE projection_entity ADD COLUMN placeholders INTEGER NOT NULL DEFAULT 0")


def _consumer_filters(db: sqlite_utils.Database) -> None:
    # A gRPC consumer's filter of each stream id, as `Filter.to_json` writes it: it lives in
    # the consumer's database, next to its offsets, and survives a restart (docs/filters.md).
    db.execute("CREATE TABLE consumer_filter (stream_id TEXT PRIMARY KEY, filter TEXT NOT NULL)")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_journal_and_snapshots,
    _v2_projection_offsets,
    _v3_journal_in_commit_order,
    _v4_clock_is_the_newest_event,
    _v5_integer_entity_keys,
    _v6_projection_registry_and_leases,
    _replication_metadata_and_snapshot_events,
    _projection_entity_placeholders,
    _consumer_filters,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema of `conn` to SCHEMA_VERSION and mark the file as fluvial's, or raise
    what `identify` raises (the file unchanged)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = identify(conn, path)
        # Only what must change is written: opening an up-to-date file changes no byte of it.
        if found < SCHEMA_VERSION:
            db = sqlite_utils.Database(conn)
            for migration in MIGRATIONS[found:]:
                migration(db)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        (application_id,) = conn.execute("PRAGMA application_id").fetchone()
        if application_id != APPLICATION_ID:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# Marks a file as a fluvial journal in its header (`PRAGMA application_id`, "fluv"), so that
# another application's database is told apart by one read. Files of fluvial before it was
# set are told by their tables (`_has_journal_tables`), and marked when next opened.
APPLICATION_ID = 0x666C7576

# The columns of `event_journal` that every schema version has (`metadata` until it became
# `version_vector`).
_JOURNAL_COLUMNS = frozenset(
    [
        "persistence_id",
        "seq_nr",
        "entity_type",
        "slice",
        "db_timestamp",
        "tags",
        "manifest",
        "ser_version",
        "payload",
    ]
)


def identify(conn: sqlite3.Connection, path: str) -> int:
    """The schema version of a fluvial journal (0 for an empty database), read without
    writing anything.

    Raises NotAJournal for another application's database and SchemaVersionTooNew for a
    journal of a newer fluvial.
    """
    (application_id,) = conn.execute("PRAGMA application_id").fetchone()
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if application_id == 0 and found == 0 and not tables:
        return 0
    if application_id not in (0, APPLICATION_ID):
        raise NotAJournal(
            path,
            f"it is another application's SQLite database (application id "
            f"{application_id:#x}); fluvial changed nothing in it: use a file of its own for "
            "the journal",
        )
    if application_id == 0 and not (found >= 1 and _has_journal_tables(conn, tables)):
        named = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotAJournal(
            path,
            f"it is a SQLite database (user_version {found}, tables: {named or 'none'}) but "
            "not a fluvial journal; fluvial changed nothing in it: use a file of its own for "
            "the journal",
        )
    if found > SCHEMA_VERSION:
        raise SchemaVersionTooNew(path, found, SCHEMA_VERSION)
    return int(found)


def _has_journal_tables(conn: sqlite3.Connection, tables: set[str]) -> bool:
    if not {"event_journal", "snapshot"} <= tables:
        return False
    columns = {row[1] for row in conn.execute("PRAGMA table_info(event_journal)")}
    return columns >= _JOURNAL_COLUMNS
