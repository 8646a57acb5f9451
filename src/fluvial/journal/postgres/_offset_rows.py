"""The rows of the projections' tables in a PostgreSQL journal schema: the SQL that the offset
store (`_offset_store.py`) and its management API (`_offset_management.py`) run with a pool
connection, in a worker thread, inside the transaction of the call.

Compare and set with row counts, as on SQLite: the generation is read under a share lock (a
management call's update waits for the saves in flight, and a save waits for it and then
reads the new generation), a new entity is inserted only if no other instance did, a known
one updated only from the seq nr the saving instance read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import LiteralString

import msgspec
import psycopg

from fluvial.core.errors import FluvialError
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offset_tracker import OffsetChanges
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import UnknownProjection
from fluvial.journal.postgres._event_rows import Connection

_encode_seen = msgspec.json.Encoder().encode
_decode_seen = msgspec.json.Decoder(dict[str, int]).decode

# The columns of a `SeenEntity`, in its order (`SeenEntity(*row)`).
SEEN_ENTITY_COLUMNS: LiteralString = "persistence_id, seq_nr, timestamp, slice, placeholders"

_INSERT_NEW_ENTITIES: LiteralString = (
    "INSERT INTO projection_entity (projection_name, persistence_id, slice, seq_nr, timestamp, "
    "placeholders) SELECT %(projection)s, e.* FROM unnest(%(pid)s::text[], %(slice)s::integer[],"
    " %(seq_nr)s::bigint[], %(timestamp)s::bigint[], %(placeholders)s::integer[]) AS e "
    "ON CONFLICT DO NOTHING"
)
_UPDATE_KNOWN_ENTITIES: LiteralString = (
    "UPDATE projection_entity AS p SET seq_nr = e.seq_nr, timestamp = e.timestamp, "
    "placeholders = e.placeholders FROM unnest(%(pid)s::text[], %(slice)s::integer[], "
    "%(seq_nr)s::bigint[], %(timestamp)s::bigint[], %(placeholders)s::integer[], "
    "%(before)s::bigint[]) AS e(pid, slice, seq_nr, timestamp, placeholders, before) "
    "WHERE p.projection_name = %(projection)s AND p.slice = e.slice "
    "AND p.persistence_id = e.pid AND p.seq_nr = e.before"
)


def write_changes(conn: Connection, projection: str, changes: OffsetChanges) -> bool:
    """Write `changes` if the store still holds what they were made from: the generation of
    `changes.generation` and, per entity, the seq nr that `changes.previous` says; False if
    not (the caller's transaction then rolls back what was written). Raises
    UnknownProjection if the schema does not know `projection`."""
    if _registration(conn, projection, lock=True)[1] != changes.generation:
        return False
    previous = changes.previous
    new = [e for e in changes.entities if previous.get(e.persistence_id, 0) == 0]
    known = [e for e in changes.entities if previous.get(e.persistence_id, 0) != 0]
    for statement, entities in ((_INSERT_NEW_ENTITIES, new), (_UPDATE_KNOWN_ENTITIES, known)):
        if not entities:
            continue
        stored = conn.execute(
            statement,
            {
                "projection": projection,
                "pid": [e.persistence_id for e in entities],
                "slice": [e.slice for e in entities],
                "seq_nr": [e.seq_nr for e in entities],
                "timestamp": [e.timestamp for e in entities],
                "placeholders": [e.placeholders for e in entities],
                "before": [previous.get(e.persistence_id, 0) for e in entities],
            },
        ).rowcount
        if stored != len(entities):  # another instance inserted or moved one of them
            return False
    if changes.slice_offsets:
        save_slice_offsets(conn, projection, changes.slice_offsets)
    return True


def save_slice_offsets(
    conn: Connection, projection: str, offsets: Mapping[int, TimestampOffset]
) -> None:
    """Store `offsets` of `projection`'s slices, replacing theirs."""
    slices = list(offsets)
    conn.execute(
        "INSERT INTO projection_offset (projection_name, slice, timestamp, seen) "
        "SELECT %s, o.* FROM unnest(%s::integer[], %s::bigint[], %s::text[]) AS o "
        "ON CONFLICT (projection_name, slice) DO UPDATE SET timestamp = excluded.timestamp, "
        "seen = excluded.seen",
        (
            projection,
            slices,
            [offsets[s].timestamp for s in slices],
            [_encode_seen(dict(offsets[s].seen)).decode() for s in slices],
        ),
    )


def read_slice_offsets(
    conn: Connection, projection: str, slices: SliceRange
) -> dict[int, TimestampOffset]:
    """The stored offsets of `projection`'s slices in `slices`."""
    rows = conn.execute(
        "SELECT slice, timestamp, seen FROM projection_offset WHERE projection_name = %s "
        "AND slice BETWEEN %s AND %s",
        (projection, slices.min, slices.max),
    ).fetchall()
    return {s: TimestampOffset(ts, _decode_seen(seen)) for s, ts, seen in rows}


@contextlib.contextmanager
def users_sql(conn: Connection, failure: Callable[[psycopg.Error], FluvialError]) -> Iterator[None]:
    """Around the user's own SQL (a read-model migration, `clear_read_model`): a psycopg
    error it raises comes out as `failure(error)`, with the error as its `__cause__`. A
    broken connection propagates as itself (the pool says PostgresUnavailable)."""
    try:
        yield
    except psycopg.Error as exc:
        if conn.broken:
            raise
        raise failure(exc) from exc


def bump_generation(conn: Connection, projection: str) -> None:
    """Record that a management call changed `projection`'s stored offsets: a running
    instance, whose tracker holds the generation it loaded, then fails every save."""
    conn.execute(
        "UPDATE projection SET generation = generation + 1 WHERE projection_name = %s",
        (projection,),
    )


def generation(conn: Connection, projection: str) -> int:
    """The generation of `projection`'s stored offsets; UnknownProjection if unknown."""
    return _registration(conn, projection)[1]


def registered_entity_type(conn: Connection, projection: str) -> str:
    """The entity type `projection` consumes; UnknownProjection if the schema does not know
    it."""
    return _registration(conn, projection)[0]


def read_model_version(conn: Connection, projection: str) -> int:
    """The read model's migration version of `projection`, locked until the transaction
    ends (one migrating process at a time); UnknownProjection if unknown."""
    registered_entity_type(conn, projection)
    row = conn.execute(
        "SELECT read_model_version FROM projection WHERE projection_name = %s FOR UPDATE",
        (projection,),
    ).fetchone()
    assert row is not None, "a projection is never deleted"
    return int(row[0])


def _registration(conn: Connection, projection: str, *, lock: bool = False) -> tuple[str, int]:
    """The entity type and the generation of `projection` (UnknownProjection if unknown);
    `lock`: share-locked until the transaction ends, so no management call bumps it before."""
    row = conn.execute(
        "SELECT entity_type, generation FROM projection WHERE projection_name = %s"
        + (" FOR SHARE" if lock else ""),
        (projection,),
    ).fetchone()
    if row is None:
        raise UnknownProjection(
            f"no projection named {projection!r} in this PostgreSQL schema (it has never run "
            "nor been registered; check the name)",
            projection,
        )
    return str(row[0]), int(row[1])


def check_entity_type(conn: Connection, projection: str, entity_type: str) -> None:
    """UnknownProjection unless the schema knows `projection` as a consumer of `entity_type`."""
    registered = registered_entity_type(conn, projection)
    if registered != entity_type:
        raise UnknownProjection.not_a_consumer_of(projection, registered, entity_type)


def register_projection(conn: Connection, projection: str, entity_type: str) -> None:
    """Make `projection` known as a consumer of `entity_type` (UnknownProjection if it is
    known with another one)."""
    conn.execute(
        "INSERT INTO projection (projection_name, entity_type) VALUES (%s, %s) "
        "ON CONFLICT DO NOTHING",
        (projection, entity_type),
    )
    check_entity_type(conn, projection, entity_type)


def not_yet(conn: Connection, projection: str, heads: dict[str, int]) -> dict[str, int]:
    """The entities of `heads` whose stored seq nr for `projection` is still below theirs."""
    pids = list(heads)
    rows = conn.execute(
        "SELECT persistence_id, seq_nr FROM projection_entity AS p JOIN unnest(%s::text[], "
        "%s::integer[]) AS h(pid, slice) ON p.persistence_id = h.pid AND p.slice = h.slice "
        "WHERE p.projection_name = %s",
        (pids, [slice_for(pid) for pid in pids], projection),
    ).fetchall()
    stored = {pid: int(seq_nr) for pid, seq_nr in rows}
    return {pid: head for pid, head in heads.items() if stored.get(pid, 0) < head}
