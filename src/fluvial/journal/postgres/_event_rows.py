"""How events become rows of `event_journal` and rows become records again, and the
transactions that append them; each function runs whole in a pool worker thread.

db_timestamp is clock_timestamp() in microseconds, never below the `floor` the caller passes
(its process's last timestamp + 1), plus the event's place in its batch: strictly increasing
along one process's appends. With several writers the timestamps are not commit order: a slow
transaction can commit an event behind what a reader has already passed (docs/postgres.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, LiteralString

import msgspec
import psycopg
import psycopg.errors

from fluvial.core.events_from_elsewhere import FromElsewhereDecision, decide_from_elsewhere
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import JournalConflict, JournalGap

Connection = psycopg.Connection[tuple[Any, ...]]

# What a read returns of each event, in `event_from_row`'s order.
EVENT_COLUMNS: LiteralString = (
    "persistence_id, seq_nr, entity_type, slice, db_timestamp, tags, manifest, ser_version, "
    "payload, write_timestamp, origin_replica, origin_seq_nr, version_vector"
)
# The same without payloads: PostgreSQL then does not read their bytes (nor their TOAST).
EVENT_COLUMNS_WITHOUT_PAYLOAD = EVENT_COLUMNS.replace(
    "manifest, ser_version, payload", "NULL, NULL, NULL"
)
# The same with the payloads of one origin replica's events (`%(origin)s`) left out: a NULL
# manifest makes a record without payload.
EVENT_COLUMNS_NOT_FROM_ORIGIN = EVENT_COLUMNS.replace(
    "manifest, ser_version, payload",
    "CASE WHEN origin_replica = %(origin)s THEN NULL ELSE manifest END, ser_version, "
    "CASE WHEN origin_replica = %(origin)s THEN NULL ELSE payload END",
)
# Ties of db_timestamp (several writers) are ordered by the event's key.
EVENTS_BY_SLICES: LiteralString = (
    "SELECT {columns} FROM event_journal WHERE entity_type = %(entity_type)s "
    "AND slice BETWEEN %(min)s AND %(max)s AND db_timestamp BETWEEN %(from)s AND %(to)s "
    "ORDER BY db_timestamp, persistence_id, seq_nr LIMIT %(limit)s"
)
# The newest event of an entity type in a slice range: per slice, one descent of
# event_journal_by_slices (entity type, slice, timestamp) to the slice's newest entry, read
# backwards with LIMIT 1; at most 1,024 descents, however many events. (A max() over the
# range would read every entry of it.)
LATEST_EVENT_TIMESTAMP: LiteralString = (
    "SELECT max(latest.db_timestamp) FROM generate_series(%(min)s::integer, %(max)s::integer) "
    "AS s(slice) CROSS JOIN LATERAL (SELECT db_timestamp FROM event_journal "
    "WHERE entity_type = %(entity_type)s AND slice = s.slice "
    "ORDER BY db_timestamp DESC LIMIT 1) AS latest"
)
# The server's clock as appends read it (`_INSERT`), in the microseconds of db_timestamp.
CLOCK_NOW: LiteralString = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
HIGHEST_SEQ_NR: LiteralString = (
    "SELECT coalesce(max(seq_nr), 0) FROM event_journal WHERE persistence_id = %s"
)
# One statement for a whole batch, whatever its size: the columns go as arrays, one row each.
_INSERT: LiteralString = """
WITH clock AS (
    SELECT greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, %(floor)s)
        AS first
), stored AS (
    INSERT INTO event_journal (persistence_id, seq_nr, entity_type, slice, db_timestamp,
        write_timestamp, tags, manifest, ser_version, payload, origin_replica, origin_seq_nr,
        version_vector)
    SELECT e.pid, e.seq_nr, e.entity_type, e.slice, clock.first + e.n - 1, e.written,
        e.tags::jsonb, e.manifest, e.ser_version, e.payload, e.origin, e.origin_seq_nr, e.vv
    FROM clock, unnest(%(pid)s::text[], %(seq_nr)s::bigint[], %(entity_type)s::text[],
        %(slice)s::integer[], %(written)s::bigint[], %(tags)s::text[], %(manifest)s::text[],
        %(ser_version)s::integer[], %(payload)s::bytea[], %(origin)s::text[],
        %(origin_seq_nr)s::bigint[], %(vv)s::text[])
        WITH ORDINALITY AS e(pid, seq_nr, entity_type, slice, written, tags, manifest,
            ser_version, payload, origin, origin_seq_nr, vv, n)
    {condition}
    RETURNING db_timestamp
)
SELECT min(db_timestamp) FROM stored
"""
# An append's check, in its insert: one statement, its own transaction, one round trip (a
# transaction around a check and an insert took four, and the append half the raw driver's
# rate). The entity's highest stored seq nr must be the one before the batch's first.
_FOLLOWS_STORED: LiteralString = (
    "WHERE (SELECT coalesce(max(seq_nr), 0) FROM event_journal "
    "WHERE persistence_id = %(follows_pid)s) = %(follows_seq_nr)s"
)
_json_encode = msgspec.json.Encoder().encode


def tags_json(tags: frozenset[str]) -> str | None:
    """The stored form of tags: a sorted JSON array, NULL when untagged."""
    return _json_encode(sorted(tags)).decode() if tags else None


def decode_tags(stored: list[str] | None) -> frozenset[str]:
    """The tags of a `jsonb` column as psycopg reads it."""
    return frozenset(stored) if stored else frozenset()


def _insert(
    conn: Connection, events: Sequence[EventRecord], floor: int, *, checked: bool = False
) -> int | None:
    """Insert `events`; the first one's timestamp. `checked`: only if they follow their
    (one) entity's stored events, else insert nothing and return None."""
    payloads = [e.payload for e in events]
    replications = [e.replication for e in events]
    row = conn.execute(
        _INSERT.format(condition=_FOLLOWS_STORED if checked else ""),
        {
            "follows_pid": events[0].persistence_id,
            "follows_seq_nr": events[0].seq_nr - 1,
            "floor": floor,
            "pid": [e.persistence_id for e in events],
            "seq_nr": [e.seq_nr for e in events],
            "entity_type": [e.entity_type for e in events],
            "slice": [e.slice for e in events],
            "written": [e.write_timestamp or None for e in events],
            "tags": [tags_json(e.tags) for e in events],
            "manifest": [p.manifest if p else None for p in payloads],
            "ser_version": [p.version if p else None for p in payloads],
            "payload": [p.data if p else None for p in payloads],
            "origin": [r.origin_replica if r else None for r in replications],
            "origin_seq_nr": [r.origin_seq_nr if r else None for r in replications],
            "vv": [r.version_vector.to_json() if r else None for r in replications],
        },
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def append_events(conn: Connection, events: Sequence[EventRecord], floor: int) -> int:
    """Append one entity's consecutive `events` if they follow its stored ones; the first
    one's timestamp. Raises JournalConflict or JournalGap, storing nothing."""
    pid, first = events[0].persistence_id, events[0].seq_nr
    try:
        stored = _insert(conn, events, floor, checked=True)
    except psycopg.errors.UniqueViolation as exc:
        # Another writer stored the seq nr after this statement's check: its commit won.
        raise JournalConflict(pid, first) from exc
    if stored is not None:
        return stored
    # Nothing stored: say why (the highest seq nr only grows, so a re-read is right about a
    # taken seq nr; a gap it may see filled since, and the caller's retry then succeeds).
    row = conn.execute(HIGHEST_SEQ_NR, (pid,)).fetchone()
    highest = int(row[0]) if row else 0
    if first <= highest:
        raise JournalConflict(pid, first)
    raise JournalGap(pid, first, highest)


def write_from_elsewhere(
    conn: Connection, events: Sequence[EventRecord], floor: int
) -> tuple[FromElsewhereDecision, int]:
    """Store those of `events` that follow their entity's stored ones (the core decides);
    the decision and the first stored one's timestamp (0 if none)."""
    pids = sorted({e.persistence_id for e in events})
    with conn.transaction():
        # Senders of the same events at once (a resend after a lost answer) take turns per
        # entity, so that the later one answers "already stored"; in one order, no deadlock.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(pid, 0)) FROM unnest(%s::text[]) AS pid",
            (pids,),
        )
        rows = conn.execute(
            "SELECT persistence_id, max(seq_nr) FROM event_journal "
            "WHERE persistence_id = ANY(%s) GROUP BY persistence_id",
            (pids,),
        ).fetchall()
        highest = {pid: int(seq_nr) for pid, seq_nr in rows}
        decision = decide_from_elsewhere(events, lambda pid: highest.get(pid, 0))
        if not decision.stored:
            return decision, 0
        try:
            first = _insert(conn, decision.stored, floor)
        except psycopg.errors.UniqueViolation as exc:
            # Another writer stored one of these seq nrs after the read: nothing is stored.
            record = decision.stored[0]
            raise JournalConflict(record.persistence_id, record.seq_nr) from exc
        assert first is not None, "an unchecked insert stores every event"
        return decision, first


def event_from_row(row: tuple[Any, ...]) -> EventRecord:
    """The record of a row selected as `EVENT_COLUMNS` (or one of its variants)."""
    (pid, seq_nr, entity_type, slice_, timestamp, tags, manifest, version, data) = row[:9]
    written, origin_replica, origin_seq_nr, version_vector = row[9:]
    return EventRecord(
        persistence_id=pid,
        seq_nr=seq_nr,
        entity_type=entity_type,
        slice=slice_,
        timestamp=timestamp,
        write_timestamp=timestamp if written is None else written,
        tags=decode_tags(tags),
        payload=SerializedPayload(manifest, version, bytes(data)) if manifest is not None else None,
        replication=None
        if origin_replica is None
        else ReplicationMetadata(
            origin_replica, origin_seq_nr, VersionVector.from_json(version_vector)
        ),
    )


def unseen(after: TimestampOffset, records: list[EventRecord], limit: int) -> list[EventRecord]:
    """The first `limit` of `records` (in timestamp order) that `after` has not seen. With
    several writers, events of other entities share the offset's timestamp, in key order, so
    every record is looked at, not only the leading ones."""
    return [r for r in records if after.is_behind(r)][:limit]
