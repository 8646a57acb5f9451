"""The rows of the projections' tables in a SQLite journal file: the SQL that the offset store
(`sqlite_offset_store.py`) and its management API (`sqlite_offset_management.py`) run with a
connection, in a reader thread or inside the writer's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec
import outcome

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offset_tracker import OffsetChanges
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import UnknownProjection

T = TypeVar("T")

_encode_seen = msgspec.json.Encoder().encode
_decode_seen = msgspec.json.Decoder(dict[str, int]).decode

_INSERT_ENTITY = (
    "INSERT INTO projection_entity (projection_name, persistence_id, slice, seq_nr, timestamp) "
    "VALUES (?,?,?,?,?)"
)
_UPDATE_ENTITY = (
    "UPDATE projection_entity SET seq_nr = ?, timestamp = ? "
    "WHERE projection_name = ? AND slice = ? AND persistence_id = ? AND seq_nr = ?"
)


def write_changes(conn: sqlite3.Connection, projection: str, changes: OffsetChanges) -> bool:
    """Write `changes` with `conn` if the store still holds, per entity, the seq nr that
    `changes.previous` says; False if not (the caller rolls back what was written)."""
    new: list[tuple[str, str, int, int, int]] = []
    known: list[tuple[int, int, str, int, str, int]] = []
    previous = changes.previous
    for e in changes.entities:
        before = previous.get(e.persistence_id, 0)
        if before == 0:
            new.append((projection, e.persistence_id, e.slice, e.seq_nr, e.timestamp))
        else:
            known.append((e.seq_nr, e.timestamp, projection, e.slice, e.persistence_id, before))
    try:
        if new:
            conn.executemany(_INSERT_ENTITY, new)  # fails if another instance inserted one
    except sqlite3.IntegrityError:
        return False
    if known and conn.executemany(_UPDATE_ENTITY, known).rowcount != len(known):
        return False
    if changes.slice_offsets:
        save_slice_offsets(conn, projection, changes.slice_offsets)
    return True


def save_slice_offsets(
    conn: sqlite3.Connection, projection: str, offsets: Mapping[int, TimestampOffset]
) -> None:
    """Store `offsets` of `projection`'s slices, replacing theirs."""
    conn.executemany(
        "INSERT OR REPLACE INTO projection_offset (projection_name, slice, timestamp, seen) "
        "VALUES (?,?,?,?)",
        [
            (projection, slice_, o.timestamp, _encode_seen(dict(o.seen)).decode())
            for slice_, o in offsets.items()
        ],
    )


def in_savepoint(
    conn: sqlite3.Connection, function: Callable[[], outcome.Outcome[T] | None]
) -> outcome.Outcome[T] | None:
    """Run `function` in a savepoint, rolled back unless it answers `outcome.Value`.

    An exception of `function` is answered as `outcome.Error`, unless SQLite rolled back the
    whole transaction (a storage error such as a full disk): that one propagates, failing
    the writer's batch.
    """
    conn.execute("SAVEPOINT projection_write")
    try:
        result = function()
    except Exception as exc:
        if not conn.in_transaction:
            raise
        result = outcome.Error(exc)
    if not isinstance(result, outcome.Value):
        conn.execute("ROLLBACK TO projection_write")
    conn.execute("RELEASE projection_write")
    return result


def registered_entity_type(conn: sqlite3.Connection, projection: str) -> str:
    """The entity type `projection` consumes; UnknownProjection if the file does not know it."""
    row = conn.execute(
        "SELECT entity_type FROM projection WHERE projection_name = ?", (projection,)
    ).fetchone()
    if row is None:
        raise UnknownProjection(
            f"no projection named {projection!r} in this journal (it has never run nor been "
            "registered; check the name)",
            projection,
        )
    return str(row[0])


def check_entity_type(conn: sqlite3.Connection, projection: str, entity_type: str) -> None:
    """UnknownProjection unless the file knows `projection` as a consumer of `entity_type`."""
    registered = registered_entity_type(conn, projection)
    if registered != entity_type:
        raise UnknownProjection(
            f"projection {projection!r} consumes {registered!r} events, not {entity_type!r}",
            projection,
        )


def register_projection(conn: sqlite3.Connection, projection: str, entity_type: str) -> None:
    """Make `projection` known as a consumer of `entity_type` (UnknownProjection if it is
    known with another one)."""
    conn.execute(
        "INSERT OR IGNORE INTO projection (projection_name, entity_type) VALUES (?, ?)",
        (projection, entity_type),
    )
    check_entity_type(conn, projection, entity_type)


def not_yet(projection: str, heads: dict[str, int], conn: sqlite3.Connection) -> dict[str, int]:
    """The entities of `heads` whose stored seq nr for `projection` is still below theirs."""
    waiting: dict[str, int] = {}
    for pid, head in heads.items():
        row = conn.execute(
            "SELECT seq_nr FROM projection_entity WHERE projection_name = ? AND slice = ? "
            "AND persistence_id = ?",
            (projection, slice_for(pid), pid),
        ).fetchone()
        if row is None or row[0] < head:
            waiting[pid] = head
    return waiting


def read_slice_offsets(
    conn: sqlite3.Connection, projection: str, slices: SliceRange
) -> dict[int, TimestampOffset]:
    """The stored offsets of `projection`'s slices in `slices`."""
    rows = conn.execute(
        "SELECT slice, timestamp, seen FROM projection_offset WHERE projection_name = ? "
        "AND slice BETWEEN ? AND ?",
        (projection, slices.min, slices.max),
    )
    return {s: TimestampOffset(ts, _decode_seen(seen)) for s, ts, seen in rows}
