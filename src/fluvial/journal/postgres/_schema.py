"""The journal's tables in one PostgreSQL schema, created and migrated under a lock, versioned
by the row of `fluvial_schema_version`.

Each migration moves the schema from version `i` to `i + 1`; a schema whose version is newer
than this code knows is refused, never touched. Connections find the tables through their
`search_path` (see `ConnectionPool`), so the statements name no schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from fluvial.core.errors import UsageError
from fluvial.journal.postgres._errors import PostgresSchemaTooNew

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(schema: str) -> None:
    """Raise UsageError unless `schema` is a plain lower-case PostgreSQL identifier (it goes
    into every connection's `search_path`, unquoted)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise UsageError(
            f"schema {schema!r} is not a plain PostgreSQL name: use lower-case letters, "
            "digits and _ (not first), at most 63 characters"
        )


def _v1_journal_and_snapshots(conn: psycopg.Connection[Any]) -> None:
    # The SQLite schema's concepts. Keyed by (persistence_id, seq_nr): a second writer of a
    # seq nr fails on the key, whichever process it is in. db_timestamp is microseconds since
    # the epoch from clock_timestamp() (see _event_rows.py), write_timestamp the origin's for
    # events written elsewhere first (NULL for those written here: it is their db_timestamp).
    # The replication metadata is typed, origin_replica a column of its own so that a producer
    # filters on it in SQL; tags a JSON array (NULL when untagged), for filters later.
    conn.execute(
        """CREATE TABLE event_journal (
            persistence_id text NOT NULL,
            seq_nr bigint NOT NULL,
            entity_type text NOT NULL,
            slice integer NOT NULL,
            db_timestamp bigint NOT NULL,
            write_timestamp bigint,
            tags jsonb,
            manifest text,
            ser_version integer,
            payload bytea,
            origin_replica text,
            origin_seq_nr bigint,
            version_vector text,
            PRIMARY KEY (persistence_id, seq_nr)
        )"""
    )
    conn.execute(
        "CREATE INDEX event_journal_by_slices ON event_journal (entity_type, slice, db_timestamp)"
    )
    # A snapshot keeps the timestamp and tags of the event it was taken at, so that a stream
    # can start from it in that event's place.
    conn.execute(
        """CREATE TABLE snapshot (
            persistence_id text NOT NULL,
            seq_nr bigint NOT NULL,
            entity_type text NOT NULL,
            slice integer NOT NULL,
            db_timestamp bigint NOT NULL,
            manifest text NOT NULL,
            ser_version integer NOT NULL,
            payload bytea NOT NULL,
            event_timestamp bigint NOT NULL,
            tags jsonb,
            PRIMARY KEY (persistence_id, seq_nr)
        )"""
    )
    conn.execute(
        "CREATE INDEX snapshot_by_slices ON snapshot (entity_type, slice, event_timestamp)"
    )


def _v2_projections(conn: psycopg.Connection[Any]) -> None:
    # The SQLite schema's projection tables. `projection` holds the entity type each consumes,
    # its read model's migration version, and `generation`, which the management calls that
    # change offsets bump: every save compares it (under a share lock) with the one it loaded.
    conn.execute(
        """CREATE TABLE projection (
            projection_name text PRIMARY KEY,
            entity_type text NOT NULL,
            read_model_version integer NOT NULL DEFAULT 0,
            generation bigint NOT NULL DEFAULT 0
        )"""
    )
    # `seen` is the offset's entities at its own timestamp, a JSON object pid -> seq nr.
    conn.execute(
        """CREATE TABLE projection_offset (
            projection_name text NOT NULL,
            slice integer NOT NULL,
            timestamp bigint NOT NULL,
            seen text NOT NULL,
            PRIMARY KEY (projection_name, slice)
        )"""
    )
    # Keyed like the SQLite table: a second instance inserting an entity fails on the key.
    conn.execute(
        """CREATE TABLE projection_entity (
            projection_name text NOT NULL,
            slice integer NOT NULL,
            persistence_id text NOT NULL,
            seq_nr bigint NOT NULL,
            timestamp bigint NOT NULL,
            placeholders integer NOT NULL DEFAULT 0,
            PRIMARY KEY (projection_name, slice, persistence_id)
        )"""
    )
    conn.execute(
        "CREATE INDEX projection_entity_by_time ON projection_entity "
        "(projection_name, slice, timestamp)"
    )
    # One owner per projection and slice range until `expires_at` (seconds on the store's
    # clock: the database's unless one is given).
    conn.execute(
        """CREATE TABLE projection_lease (
            projection_name text NOT NULL,
            slice_min integer NOT NULL,
            slice_max integer NOT NULL,
            owner text NOT NULL,
            expires_at double precision NOT NULL,
            PRIMARY KEY (projection_name, slice_min, slice_max)
        )"""
    )


def _v3_consumer_filters(conn: psycopg.Connection[Any]) -> None:
    # The SQLite schema's `consumer_filter`: a gRPC consumer's filter of each stream id, as
    # `Filter.to_json` writes it, next to its offsets (docs/filters.md).
    conn.execute("CREATE TABLE consumer_filter (stream_id text PRIMARY KEY, filter text NOT NULL)")


MIGRATIONS: list[Callable[[psycopg.Connection[Any]], None]] = [
    _v1_journal_and_snapshots,
    _v2_projections,
    _v3_consumer_filters,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create `schema` and bring its tables to SCHEMA_VERSION, in one transaction; raise
    PostgresSchemaTooNew (changing nothing) if its version is newer."""
    with conn.transaction():
        # One migration at a time per schema, whichever process opens it.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"fluvial:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE IF NOT EXISTS fluvial_schema_version (version integer)")
        row = conn.execute("SELECT max(version) FROM fluvial_schema_version").fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise PostgresSchemaTooNew(schema, found, SCHEMA_VERSION)
        if found == SCHEMA_VERSION:
            return
        for migration in MIGRATIONS[found:]:
            migration(conn)
        conn.execute("DELETE FROM fluvial_schema_version")
        conn.execute("INSERT INTO fluvial_schema_version VALUES (%s)", (SCHEMA_VERSION,))
