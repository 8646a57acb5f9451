"""The rows of the projections' tables in a SQLite journal file: the SQL that the offset store
(`_offset_store.py`) and its management API (`_offset_management.py`) run with a
connection, in a reader thread or inside the writer's transaction, and `write_in_savepoint`,
the one way they write."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import msgspec
import outcome

from fluvial.core.errors import FluvialError
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offset_tracker import OffsetChanges
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import UnknownProjection
from fluvial.journal.sqlite._database import SqliteDatabase
from fluvial.journal.sqlite._transaction import WriteTransaction

T = TypeVar("T")

_encode_seen = msgspec.json.Encoder().encode
_decode_seen = msgspec.json.Decoder(dict[str, int]).decode

_INSERT_ENTITY = (
    "INSERT INTO projection_entity (projection_name, persistence_id, slice, seq_nr, timestamp, "
    "placeholders) VALUES (?,?,?,?,?,?)"
)
_UPDATE_ENTITY = (
    "UPDATE projection_entity SET seq_nr = ?, timestamp = ?, placeholders = ? "
    "WHERE projection_name = ? AND slice = ? AND persistence_id = ? AND seq_nr = ?"
)
# The same, only while the projection's generation is the one given: the first update of a
# save compares it, so that the common save (an event of a known entity) is one statement.
_UPDATE_ENTITY_OF_GENERATION = (
    _UPDATE_ENTITY + " AND (SELECT generation FROM projection WHERE projection_name = ?) = ?"
)
# The columns of a `SeenEntity`, in its order (`SeenEntity(*row)`).
SEEN_ENTITY_COLUMNS = "persistence_id, seq_nr, timestamp, slice, placeholders"


def write_changes(conn: sqlite3.Connection, projection: str, changes: OffsetChanges) -> bool:
    """Write `changes` with `conn` if the store still holds what they were made from: the
    generation of `changes.generation` (no management call since) and, per entity, the seq
    nr that `changes.previous` says; False if not (the caller rolls back what was written).
    Raises UnknownProjection if the file does not know `projection`; a save with a known
    entity checks the registration in that entity's update instead, where a file that lost
    it would read as False (no file does: registrations are never deleted)."""
    new: list[tuple[str, str, int, int, int, int]] = []
    known: list[tuple[int, int, int, str, int, str, int]] = []
    previous = changes.previous
    for e in changes.entities:
        before = previous.get(e.persistence_id, 0)
        if before == 0:
            new.append(
                (projection, e.persistence_id, e.slice, e.seq_nr, e.timestamp, e.placeholders)
            )
        else:
            known.append(
                (
                    e.seq_nr,
                    e.timestamp,
                    e.placeholders,
                    projection,
                    e.slice,
                    e.persistence_id,
                    before,
                )
            )
    if known:
        # A stored row of the projection says the file knows it (registrations are never
        # deleted): its update compares the generation, no query of the registration.
        first = (*known[0], projection, changes.generation)
        if conn.execute(_UPDATE_ENTITY_OF_GENERATION, first).rowcount != 1:
            return False
        rest = known[1:]
        if rest and conn.executemany(_UPDATE_ENTITY, rest).rowcount != len(rest):
            return False
    elif _registration(conn, projection)[1] != changes.generation:
        return False
    try:
        if new:
            conn.executemany(_INSERT_ENTITY, new)  # fails if another instance inserted one
    except sqlite3.IntegrityError:
        return False
    if changes.slice_offsets:
        save_slice_offsets(conn, projection, changes.slice_offsets)
    return True


def save_slice_offsets(
    conn: sqlite3.Connection, projection: str, offsets: Mapping[int, TimestampOffset]
) -> None:
    """Store `offsets` of `projection`'s slices, replacing theirs."""
    # An upsert updates a stored row in place; INSERT OR REPLACE deleted it and inserted it
    # again (its table and its key's index written twice).
    conn.executemany(
        "INSERT INTO projection_offset (projection_name, slice, timestamp, seen) "
        "VALUES (?,?,?,?) ON CONFLICT (projection_name, slice) "
        "DO UPDATE SET timestamp = excluded.timestamp, seen = excluded.seen",
        [
            (projection, slice_, o.timestamp, _encode_seen(dict(o.seen)).decode())
            for slice_, o in offsets.items()
        ],
    )


async def write_in_savepoint(
    database: SqliteDatabase, function: Callable[[sqlite3.Connection], T], *, alone: bool = False
) -> T:
    """Run `function` in the writer thread, in a savepoint of the writer's transaction, and
    return what it returned; if it raised, its writes are rolled back and its exception is
    raised here as itself (a refusal, a conflict, a user's error). `alone` for a function
    that runs the user's code: its transaction is its own (`transactions_of`), so it needs
    no savepoint (two statements fewer per exactly-once commit): if it raised, the whole
    transaction rolls back and an empty one begins, for the writer to commit.

    The exception crosses as a value: one escaping the write would make the writer run its
    whole batch of writes again, `function` included. A storage error that made SQLite roll
    back the whole transaction (a full disk) fails the writer's batch instead, and comes out
    as the journal's typed error.
    """

    def transaction(txn: WriteTransaction) -> outcome.Outcome[T]:
        conn = txn.connection
        if alone:
            try:
                return outcome.Value(function(conn))
            except Exception as exc:
                if not conn.in_transaction:
                    raise
                conn.execute("ROLLBACK")
                conn.execute("BEGIN")  # deferred: takes no lock, so it cannot be busy
                return outcome.Error(exc)
        conn.execute("SAVEPOINT projection_write")
        try:
            result: outcome.Outcome[T] = outcome.Value(function(conn))
        except Exception as exc:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO projection_write")
            result = outcome.Error(exc)
        conn.execute("RELEASE projection_write")
        return result

    return (await database.write(transaction, alone=alone)).unwrap()


@contextlib.contextmanager
def users_sql(
    conn: sqlite3.Connection, failure: Callable[[sqlite3.Error], FluvialError]
) -> Iterator[None]:
    """Around the user's own SQL (a read-model migration, `clear_read_model`): a sqlite3
    error it raises comes out as `failure(error)`, with the error as its `__cause__`.
    One that rolled back the whole transaction (a storage error) propagates as itself, to
    fail the writer's batch."""
    try:
        yield
    except sqlite3.Error as exc:
        if not conn.in_transaction:
            raise
        raise failure(exc) from exc


def bump_generation(conn: sqlite3.Connection, projection: str) -> None:
    """Record that a management call changed `projection`'s stored offsets: a running
    instance, whose tracker holds the generation it loaded, then fails every save."""
    conn.execute(
        "UPDATE projection SET generation = generation + 1 WHERE projection_name = ?",
        (projection,),
    )


def generation(conn: sqlite3.Connection, projection: str) -> int:
    """The generation of `projection`'s stored offsets (see `bump_generation`); raises
    UnknownProjection if the file does not know it."""
    return _registration(conn, projection)[1]


def registered_entity_type(conn: sqlite3.Connection, projection: str) -> str:
    """The entity type `projection` consumes; UnknownProjection if the file does not know it."""
    return _registration(conn, projection)[0]


def _registration(conn: sqlite3.Connection, projection: str) -> tuple[str, int]:
    """The entity type and the generation of `projection` (UnknownProjection if unknown)."""
    row = conn.execute(
        "SELECT entity_type, generation FROM projection WHERE projection_name = ?", (projection,)
    ).fetchone()
    if row is None:
        raise UnknownProjection(
            f"no projection named {projection!r} in this journal (it has never run nor been "
            "registered; check the name)",
            projection,
        )
    return str(row[0]), int(row[1])


def check_entity_type(conn: sqlite3.Connection, projection: str, entity_type: str) -> None:
    """UnknownProjection unless the file knows `projection` as a consumer of `entity_type`."""
    registered = registered_entity_type(conn, projection)
    if registered != entity_type:
        raise UnknownProjection.not_a_consumer_of(projection, registered, entity_type)


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
