"""How events become rows of `event_journal` and rows become records again: the columns a
read selects, the inserts the writer runs, and the conversions between them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import JournalConflict, JournalGap
from fluvial.journal.sqlite._schema import EVENTS_OF_ENTITY
from fluvial.journal.sqlite._transaction import RowInsert
from fluvial.journal.sqlite._writer_memory import EnsuredKeys, SeqNrCheck

# What a read returns of each event, in `event_from_row`'s order. A write_timestamp is stored
# only for events written elsewhere first (those written here were written at db_timestamp),
# replication metadata only for replicated entities; the last column gathers these four in one
# JSON array for the events that have any, and is NULL for the others. Four columns for every
# event made the by-slices query ~20% slower (the exactly-once projection ~5% slower,
# benchmarks/bench_projection.py).
EVENT_COLUMNS = (
    "persistence_id, seq_nr, entity_type, slice, db_timestamp, tags, manifest, ser_version, "
    "payload, CASE WHEN write_timestamp IS NULL AND origin_replica IS NULL THEN NULL ELSE "
    "json_array(write_timestamp, origin_replica, origin_seq_nr, version_vector) END"
)
# The same without payloads: SQLite then does not read their bytes (nor their overflow pages).
EVENT_COLUMNS_WITHOUT_PAYLOAD = EVENT_COLUMNS.replace(
    "manifest, ser_version, payload", "NULL, NULL, NULL"
)
# The same with the payloads of the events of one origin replica (`:origin`) left out: a NULL
# manifest makes a record without payload.
EVENT_COLUMNS_NOT_FROM_ORIGIN = EVENT_COLUMNS.replace(
    "manifest, ser_version, payload",
    "iif(origin_replica IS :origin, NULL, manifest), ser_version, "
    "iif(origin_replica IS :origin, NULL, payload)",
)
# The by-slices query, with one of the column lists above as `{columns}`. Timestamps are unique
# in a file (FileClock), so its order is total, and event_journal_by_slices delivers it without
# sorting what lies behind the page (tests/journal/test_sqlite_replication_migration.py checks
# the plan).
EVENTS_BY_SLICES = (
    "SELECT {columns} FROM event_journal WHERE entity_type = :entity_type "
    "AND db_timestamp BETWEEN :from AND :to AND slice BETWEEN :min AND :max "
    "ORDER BY db_timestamp LIMIT :limit"
)
# The newest event of an entity type in a slice range: event_journal_by_slices (entity type,
# timestamp, slice) read backwards from the entity type's newest entry, its slice tested on
# the entry (a covering index: no row is read), until one is in the range. That is one entry
# when the range holds the newest event; entries of other slices newer than the range's
# latest before that (the whole entity type's when the range has none: an index whose slice
# came before the timestamp would answer that at once, but would give up the by-slices
# query's order: `_replication_metadata_and_snapshot_events` in _schema.py).
LATEST_EVENT_TIMESTAMP = (
    "SELECT db_timestamp FROM event_journal "
    "WHERE entity_type = :entity_type AND slice BETWEEN :min AND :max "
    "ORDER BY db_timestamp DESC LIMIT 1"
)
# The timestamp goes last: the writer appends it to each row (see `RowInsert`). The entity's
# integer key comes from the `entity` table, where the writer makes sure it exists
# (`ENTITY_KEYS`). Events of this journal's own entities leave the replication columns NULL,
# so they bind four values fewer (`INSERT_EVENT`); the others take `INSERT_TRACED_EVENT`.
# Untagged events bind '' for their tags, stored as NULL (`nullif`): see `_event_row`.
INSERT_EVENT = (
    "INSERT INTO event_journal (entity_id, persistence_id, seq_nr, entity_type, slice, tags, "
    "manifest, ser_version, payload, db_timestamp) VALUES "
    "((SELECT id FROM entity WHERE persistence_id = ?1), ?1,?2,?3,?4,nullif(?5, ''),?6,?7,?8,"
    "?9)"
)
INSERT_TRACED_EVENT = (
    "INSERT INTO event_journal (entity_id, persistence_id, seq_nr, entity_type, slice, tags, "
    "manifest, ser_version, payload, write_timestamp, origin_replica, origin_seq_nr, "
    "version_vector, db_timestamp) VALUES "
    "((SELECT id FROM entity WHERE persistence_id = ?1), ?1,?2,?3,?4,nullif(?5, ''),?6,?7,?8,"
    "?9,?10,?11,?12,?13)"
)
ENTITY_KEYS = EnsuredKeys("INSERT OR IGNORE INTO entity (persistence_id) VALUES (?)")
# An append must start right after the entity's highest stored seq nr; the writer remembers
# that of each entity it has written, so this query runs once per entity (and again after
# another process has written the file).
FOLLOWS_STORED = SeqNrCheck(
    f"SELECT coalesce(max(seq_nr), 0) FROM event_journal WHERE {EVENTS_OF_ENTITY}", JournalGap
)
_json_encode = msgspec.json.Encoder().encode
_json_decode_tags = msgspec.json.Decoder(list[str]).decode
_json_decode = msgspec.json.Decoder().decode


def tags_json(tags: frozenset[str]) -> str | None:
    """The stored form of tags: a sorted JSON array, NULL when untagged."""
    # NULL when untagged: most events are, and NULL costs a byte.
    return _json_encode(sorted(tags)).decode() if tags else None


def decode_tags(stored: str | None) -> frozenset[str]:
    """The tags of their stored form (`tags_json`)."""
    return frozenset(_json_decode_tags(stored)) if stored else frozenset()


def _conflict(rows: list[tuple[Any, ...]]) -> Exception:
    # The entity's first row: persistence_id and seq_nr lead every row (see _event_row).
    return JournalConflict(rows[0][0], rows[0][1])


def insert_events(events: Sequence[EventRecord]) -> RowInsert:
    """The write that appends one entity's `events` (checked to follow its stored ones)."""
    for record in events:
        if record.replication is not None or record.write_timestamp:
            rows = [traced_event_row(e) for e in events]
            return RowInsert(INSERT_TRACED_EVENT, rows, _conflict, ENTITY_KEYS, FOLLOWS_STORED)
    # map, not a list comprehension: no frame of its own per append
    return RowInsert(
        INSERT_EVENT, list(map(_event_row, events)), _conflict, ENTITY_KEYS, FOLLOWS_STORED
    )


def _event_row(record: EventRecord) -> tuple[Any, ...]:
    # sqlite3 binds an int, float, str or bytearray as it is; any other value (None, bytes)
    # it first looks up in its adapters, which costs more than SQLite's insert of the row's
    # columns (~3,400 instructions each, a formatted AttributeError among them; callgrind,
    # benchmarks/callgrind_commands.py). So an untagged event binds '' (the insert stores
    # NULL) and the payload goes as a bytearray (a copy of a few dozen bytes; stored as the
    # same BLOB, read back as bytes). Anything else goes as given: what SQLite cannot bind
    # fails the write in the writer, as a `JournalFileError`.
    payload = record.payload
    data = payload.data if payload else None
    return (
        record.persistence_id,
        record.seq_nr,
        record.entity_type,
        record.slice,
        tags_json(record.tags) if record.tags else "",  # most are untagged: no call
        payload.manifest if payload else None,
        payload.version if payload else None,
        bytearray(data) if type(data) is bytes else data,
    )


def traced_event_row(record: EventRecord) -> tuple[Any, ...]:
    """The row of an event with replication metadata or a write timestamp of its own."""
    replication = record.replication
    return (
        *_event_row(record),
        record.write_timestamp or None,
        replication.origin_replica if replication else None,
        replication.origin_seq_nr if replication else None,
        replication.version_vector.to_json() if replication else None,
    )


def event_from_row(row: tuple[Any, ...]) -> EventRecord:
    """The record of a row selected as `EVENT_COLUMNS` (or one of its variants)."""
    pid, seq_nr, entity_type, slice_, timestamp, tags, manifest, version, data, traces = row
    write_timestamp, replication = timestamp, None
    if traces is not None:
        written, origin_replica, origin_seq_nr, version_vector = _json_decode(traces)
        write_timestamp = timestamp if written is None else written
        if origin_replica is not None:
            replication = ReplicationMetadata(
                origin_replica, origin_seq_nr, VersionVector.from_json(version_vector)
            )
    return EventRecord(
        persistence_id=pid,
        seq_nr=seq_nr,
        entity_type=entity_type,
        slice=slice_,
        timestamp=timestamp,
        write_timestamp=write_timestamp,
        tags=decode_tags(tags),
        payload=SerializedPayload(manifest, version, data) if manifest is not None else None,
        replication=replication,
    )


def unseen(after: TimestampOffset, records: list[EventRecord], limit: int) -> list[EventRecord]:
    """The first `limit` of `records` (in timestamp order) that `after` has not seen: only
    the leading ones, at the offset's own timestamp, can have been."""
    skip = 0
    while skip < len(records) and not after.is_behind(records[skip]):
        skip += 1
    return records[skip : skip + limit]
