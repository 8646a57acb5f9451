"""The SQLite offset store of projections, in the same file as the journal.

Offsets live next to the events and the handlers' own tables, so an exactly-once handler's
writes and the offsets that say "handled" commit in one transaction (`commit`). Rows are keyed
by projection name and slice. Every save compares and sets: an entity's stored seq nr must
still be the one the saving instance read, so a second instance of a projection can never
apply an event twice; and a lease per projection and slice range (`acquire_lease`) refuses a
second instance at start.

Functions that run in the writer thread answer a refusal with a value, raised on the trio side:
an exception there would make the writer run the whole batch of writes again.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import attrs
import msgspec
import outcome

from fluvial.core.errors import FluvialError, UsageError
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offset_tracker import OffsetChanges, OffsetTracker, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import (
    ProjectionConflict,
    ProjectionLeaseHeld,
    UnknownEvent,
    UnknownProjection,
)
from fluvial.journal.sqlite_database import SqliteDatabase
from fluvial.journal.sqlite_schema import EVENTS_OF_ENTITY
from fluvial.journal.sqlite_transaction import WriteTransaction

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
_CHANGED_UNDER_IT = (
    "its stored offsets changed under it (another instance handled some of these events, or a "
    "management call changed them); it stopped without writing"
)


def _write_changes(conn: sqlite3.Connection, projection: str, changes: OffsetChanges) -> bool:
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
        _save_slice_offsets(conn, projection, changes.slice_offsets)
    return True


def _save_slice_offsets(
    conn: sqlite3.Connection, projection: str, offsets: Mapping[int, TimestampOffset]
) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO projection_offset (projection_name, slice, timestamp, seen) "
        "VALUES (?,?,?,?)",
        [
            (projection, slice_, o.timestamp, _encode_seen(dict(o.seen)).decode())
            for slice_, o in offsets.items()
        ],
    )


def _in_savepoint(
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


@attrs.frozen
class Lease:
    """An instance's ownership of a projection's slice range, until `expires_at` (seconds on
    the store's clock) unless renewed."""

    projection: str
    slices: SliceRange
    owner: str
    expires_at: float


def _registered_entity_type(conn: sqlite3.Connection, projection: str) -> str:
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


def _check_entity_type(conn: sqlite3.Connection, projection: str, entity_type: str) -> None:
    registered = _registered_entity_type(conn, projection)
    if registered != entity_type:
        raise UnknownProjection(
            f"projection {projection!r} consumes {registered!r} events, not {entity_type!r}",
            projection,
        )


class SqliteOffsetStore:
    """Loads and saves projection offsets, holds their leases, and runs the transaction an
    exactly-once handler writes through; also the management API (`offsets`, `backlog`,
    `set_offset`, `skip_event`, `reset`, `wait_until_caught_up`).

    `clock` gives the seconds that leases expire by; every process sharing the file must use
    the same one (the wall clock, the default). Management calls on a projection the file does
    not know raise UnknownProjection.
    """

    def __init__(self, database: SqliteDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.clock = clock

    async def register(self, projection: str, entity_type: str) -> None:
        """Make `projection`, a consumer of `entity_type` events, known to the store, e.g. to
        `set_offset` it before its first run (`serve_projection` registers it too). Raises
        UnknownProjection if the name is registered with another entity type."""

        def write(txn: WriteTransaction) -> UsageError | None:
            try:
                _register(txn.connection, projection, entity_type)
            except UsageError as exc:
                return exc
            return None

        if (refused := await self.database.write(write)) is not None:
            raise refused

    async def load(self, projection: str, slices: SliceRange, *, window: int) -> OffsetTracker:
        """The tracker of `projection` over `slices`, holding the entities seen within
        `window` microseconds before the resume point (older ones stay in the store)."""

        def query(conn: sqlite3.Connection) -> OffsetTracker:
            offsets = _read_slice_offsets(conn, projection, slices)
            tracker = OffsetTracker(slices, slice_offsets=offsets, window=window)
            horizon = tracker.resume_offset().timestamp - window
            rows = conn.execute(
                "SELECT persistence_id, seq_nr, timestamp, slice FROM projection_entity "
                "WHERE projection_name = ? AND slice BETWEEN ? AND ? AND timestamp >= ?",
                (projection, slices.min, slices.max, horizon),
            ).fetchall()
            (any_older,) = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM projection_entity WHERE projection_name = ? "
                "AND slice BETWEEN ? AND ? AND timestamp < ?)",
                (projection, slices.min, slices.max, horizon),
            ).fetchone()
            return OffsetTracker(
                slices,
                slice_offsets=offsets,
                entities=[SeenEntity(*row) for row in rows],
                window=window,
                complete=not any_older,
            )

        return await self.database.read(query)

    async def load_entity(self, projection: str, persistence_id: str) -> SeenEntity | None:
        """The stored seq nr of one entity for `projection` (None: never handled)."""
        slice_ = slice_for(persistence_id)

        def query(conn: sqlite3.Connection) -> SeenEntity | None:
            row = conn.execute(
                "SELECT persistence_id, seq_nr, timestamp, slice FROM projection_entity "
                "WHERE projection_name = ? AND slice = ? AND persistence_id = ?",
                (projection, slice_, persistence_id),
            ).fetchone()
            return SeenEntity(*row) if row else None

        return await self.database.read(query)

    async def save(self, projection: str, slices: SliceRange, changes: OffsetChanges) -> None:
        """Store `changes` of the instance over `slices`; raises ProjectionConflict (and
        stores nothing) if the stored offsets are not the ones it read."""
        await self.commit(projection, slices, changes, None)

    async def commit(
        self,
        projection: str,
        slices: SliceRange,
        changes: OffsetChanges,
        write: Callable[[sqlite3.Connection], T] | None,
    ) -> T | None:
        """Store `changes` and run `write` (an exactly-once handler's writes) in one
        transaction, so both commit or neither; return what `write` returned.

        The changes are compared and set first: if the store no longer holds the offsets
        the instance read, `write` does not run, nothing is stored and ProjectionConflict is
        raised. `write` runs once per call, in the writer thread, through the connection it
        is given; if it raises, nothing of it or of the changes is stored and its exception
        is raised here as itself.
        """
        if changes.empty and write is None:
            return None

        def run(conn: sqlite3.Connection) -> outcome.Outcome[T | None] | None:
            if not _write_changes(conn, projection, changes):
                return None
            return outcome.Value(write(conn) if write is not None else None)

        def transaction(txn: WriteTransaction) -> outcome.Outcome[T | None] | None:
            return _in_savepoint(txn.connection, lambda: run(txn.connection))

        result = await self.database.write(transaction)
        if result is None:
            raise ProjectionConflict(projection, slices, _CHANGED_UNDER_IT)
        return result.unwrap()

    async def migrate_read_model(
        self, projection: str, migrations: Sequence[Callable[[sqlite3.Connection], None]]
    ) -> None:
        """Bring the read model of `projection` to version `len(migrations)`: run, in one
        transaction, the migrations it has not run yet (the store keeps its version), so each
        runs once per file. A migration that raises undoes all and is raised as itself;
        UsageError if the store holds a newer version than `migrations` reach."""

        def run(conn: sqlite3.Connection) -> outcome.Outcome[None]:
            _registered_entity_type(conn, projection)
            (version,) = conn.execute(
                "SELECT read_model_version FROM projection WHERE projection_name = ?",
                (projection,),
            ).fetchone()
            if version > len(migrations):
                raise UsageError(
                    f"the read model of projection {projection!r} is at version {version}, "
                    f"newer than the {len(migrations)} migrations given (an older program?)"
                )
            for migration in migrations[version:]:
                migration(conn)
            conn.execute(
                "UPDATE projection SET read_model_version = ? WHERE projection_name = ?",
                (len(migrations), projection),
            )
            return outcome.Value(None)

        def transaction(txn: WriteTransaction) -> outcome.Outcome[None] | None:
            return _in_savepoint(txn.connection, lambda: run(txn.connection))

        result = await self.database.write(transaction)
        assert result is not None
        result.unwrap()

    async def acquire_lease(
        self, projection: str, entity_type: str, slices: SliceRange, *, owner: str, duration: float
    ) -> Lease:
        """Take the lease of `projection` over `slices` for `duration` seconds, for `owner`,
        registering the projection if it is new; an expired lease of an overlapping range is
        taken over. Raises ProjectionLeaseHeld if another owner holds a live lease of an
        overlapping range, UnknownProjection if `projection` consumes another entity type."""
        now = self.clock()

        def write(txn: WriteTransaction) -> FluvialError | None:
            conn = txn.connection
            try:
                _register(conn, projection, entity_type)
            except UsageError as exc:
                return exc
            holder = conn.execute(
                "SELECT owner, slice_min, slice_max, expires_at FROM projection_lease "
                "WHERE projection_name = ? AND slice_min <= ? AND slice_max >= ? "
                "AND owner != ? AND expires_at > ? ORDER BY expires_at DESC LIMIT 1",
                (projection, slices.max, slices.min, owner, now),
            ).fetchone()
            if holder is not None:
                holder_owner, holder_min, holder_max, expires_at = holder
                return ProjectionLeaseHeld(
                    projection,
                    slices,
                    holder=holder_owner,
                    holder_slices=SliceRange(holder_min, holder_max),
                    expires_in=expires_at - now,
                )
            conn.execute(
                "DELETE FROM projection_lease WHERE projection_name = ? AND slice_min <= ? "
                "AND slice_max >= ?",
                (projection, slices.max, slices.min),
            )
            conn.execute(
                "INSERT INTO projection_lease VALUES (?,?,?,?,?)",
                (projection, slices.min, slices.max, owner, now + duration),
            )
            return None

        if (refused := await self.database.write(write)) is not None:
            raise refused
        return Lease(projection, slices, owner, now + duration)

    async def renew_lease(self, lease: Lease, duration: float) -> Lease:
        """Extend `lease` to `duration` seconds from now. Raises ProjectionConflict if its
        owner no longer holds it (another instance took it over after it expired)."""
        now = self.clock()

        def write(txn: WriteTransaction) -> int:
            return txn.connection.execute(
                "UPDATE projection_lease SET expires_at = ? WHERE projection_name = ? "
                "AND slice_min = ? AND slice_max = ? AND owner = ?",
                (now + duration, lease.projection, lease.slices.min, lease.slices.max, lease.owner),
            ).rowcount

        if await self.database.write(write) != 1:
            raise ProjectionConflict(
                lease.projection,
                lease.slices,
                "lost its lease: it was not renewed in time and another instance took it over",
            )
        return attrs.evolve(lease, expires_at=now + duration)

    async def release_lease(self, lease: Lease) -> None:
        """Give `lease` up, so that another instance can start at once (no-op if lost)."""

        def write(txn: WriteTransaction) -> None:
            txn.connection.execute(
                "DELETE FROM projection_lease WHERE projection_name = ? AND slice_min = ? "
                "AND slice_max = ? AND owner = ?",
                (lease.projection, lease.slices.min, lease.slices.max, lease.owner),
            )

        await self.database.write(write)

    async def offsets(
        self, projection: str, slices: SliceRange | None = None
    ) -> dict[int, TimestampOffset]:
        """The stored offset of every slice of `projection` (in `slices`) that has one."""

        def query(conn: sqlite3.Connection) -> dict[int, TimestampOffset]:
            _registered_entity_type(conn, projection)
            return _read_slice_offsets(conn, projection, slices or SliceRange.all())

        return await self.database.read(query)

    async def backlog(self, projection: str, entity_type: str, slices: SliceRange) -> int:
        """How many events of `entity_type` in `slices` are behind the journal head for
        `projection` (per slice from its stored offset; all events where none is stored).
        Raises UnknownProjection unless `projection` is known and consumes `entity_type`."""

        def query(conn: sqlite3.Connection) -> int:
            _check_entity_type(conn, projection, entity_type)
            offsets = _read_slice_offsets(conn, projection, slices)
            total = 0
            rows = conn.execute(
                "SELECT slice, count(*) FROM event_journal WHERE entity_type = ? "
                "AND slice BETWEEN ? AND ? GROUP BY slice",
                (entity_type, slices.min, slices.max),
            ).fetchall()
            for slice_, count in rows:
                offset = offsets.get(slice_)
                if offset is None:
                    total += count
                    continue
                (behind,) = conn.execute(
                    "SELECT count(*) FROM event_journal WHERE entity_type = ? AND slice = ? "
                    "AND db_timestamp > ?",
                    (entity_type, slice_, offset.timestamp),
                ).fetchone()
                total += behind
            return total

        return await self.database.read(query)

    async def wait_until_caught_up(self, projection: str, slices: SliceRange | None = None) -> None:
        """Return once `projection` has handled (and stored the offset of) every event of its
        entity type in `slices` (default: all) that the journal held when this was called.

        It waits on the instances that run the projection, wherever they run; bound it with
        a cancel scope (`trio.fail_after`). An at-least-once projection counts an event once
        its offset is saved (`save_every` / `save_after`). Raises UnknownProjection.
        """
        slices = slices or SliceRange.all()

        def heads(conn: sqlite3.Connection) -> dict[str, int]:
            entity_type = _registered_entity_type(conn, projection)
            return dict(
                conn.execute(
                    "SELECT persistence_id, max(seq_nr) FROM event_journal WHERE entity_type = ? "
                    "AND slice BETWEEN ? AND ? GROUP BY persistence_id",
                    (entity_type, slices.min, slices.max),
                ).fetchall()
            )

        waiting = await self.database.read(heads)
        while True:
            seen = self.database.commit_count()
            waiting = await self.database.read(functools.partial(_not_yet, projection, waiting))
            if not waiting:
                return
            await self.database.wait_for_commit(seen)

    async def set_offset(
        self, projection: str, slices: SliceRange, offset: TimestampOffset
    ) -> None:
        """Resume every slice in `slices` from `offset`: the events the journal holds before
        it count as handled and those after it as not, so each entity's first event after
        `offset` is the next one handled, whichever path (query, live, backtracking) brings
        it. Moving an offset back makes the projection handle the events after it again.

        It records, per entity of those slices, its last seq nr before `offset` (the
        projection's memory of each entity is what tells a duplicate from a gap). Call it
        while the projection is stopped: a running instance stops with ProjectionConflict.
        Raises UnknownProjection."""

        def write(txn: WriteTransaction) -> UsageError | None:
            conn = txn.connection
            try:
                entity_type = _registered_entity_type(conn, projection)
            except UsageError as exc:
                return exc
            conn.execute(
                "DELETE FROM projection_entity WHERE projection_name = ? AND slice BETWEEN ? AND ?",
                (projection, slices.min, slices.max),
            )
            conn.execute(
                "INSERT INTO projection_entity "
                "(projection_name, persistence_id, slice, seq_nr, timestamp) "
                "SELECT ?, persistence_id, slice, max(seq_nr), max(db_timestamp) "
                "FROM event_journal WHERE entity_type = ? AND slice BETWEEN ? AND ? "
                "AND db_timestamp < ? GROUP BY persistence_id",
                (projection, entity_type, slices.min, slices.max, offset.timestamp),
            )
            for pid, seq_nr in offset.seen.items():  # seen at the offset's own timestamp
                conn.execute(
                    "INSERT INTO projection_entity "
                    "(projection_name, persistence_id, slice, seq_nr, timestamp) "
                    "SELECT ?, persistence_id, slice, seq_nr, db_timestamp FROM event_journal "
                    f"WHERE {EVENTS_OF_ENTITY} AND seq_nr = ? AND slice BETWEEN ? AND ? "
                    "ON CONFLICT (projection_name, slice, persistence_id) DO UPDATE SET "
                    "seq_nr = max(seq_nr, excluded.seq_nr), "
                    "timestamp = max(timestamp, excluded.timestamp)",
                    (projection, pid, seq_nr, slices.min, slices.max),
                )
            _save_slice_offsets(conn, projection, {s: offset for s in slices})
            return None

        if (refused := await self.database.write(write)) is not None:
            raise refused

    async def skip_event(self, projection: str, persistence_id: str, seq_nr: int) -> None:
        """Mark an entity's events up to `seq_nr` as handled, e.g. to get past a poison
        event (`ProjectionFailed` names it). Never moves an entity backwards. Raises
        UnknownProjection, or UnknownEvent if the journal has no such event."""

        def write(txn: WriteTransaction) -> UsageError | None:
            conn = txn.connection
            try:
                entity_type = _registered_entity_type(conn, projection)
            except UsageError as exc:
                return exc
            row = conn.execute(
                f"SELECT slice, db_timestamp, entity_type FROM event_journal "
                f"WHERE {EVENTS_OF_ENTITY} AND seq_nr = ?",
                (persistence_id, seq_nr),
            ).fetchone()
            if row is None:
                return UnknownEvent(persistence_id, seq_nr)
            slice_, timestamp, event_type = row
            if event_type != entity_type:
                return UnknownProjection(
                    f"projection {projection!r} consumes {entity_type!r} events; "
                    f"{persistence_id} is a {event_type!r}",
                    projection,
                )
            conn.execute(
                "INSERT INTO projection_entity (projection_name, persistence_id, slice, seq_nr,"
                " timestamp) VALUES (?,?,?,?,?)"
                " ON CONFLICT (projection_name, slice, persistence_id)"
                " DO UPDATE SET seq_nr = max(seq_nr, excluded.seq_nr),"
                " timestamp = max(timestamp, excluded.timestamp)",
                (projection, persistence_id, slice_, seq_nr, timestamp),
            )
            return None

        if (refused := await self.database.write(write)) is not None:
            raise refused

    async def reset(
        self,
        projection: str,
        *,
        clear_read_model: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Forget the offsets of `projection`: it starts again from the first event.

        The read model is kept: an exactly-once projection that runs again applies every
        event once more on top of it. To rebuild it, pass `clear_read_model`, a function
        that empties its tables through the connection it gets; it runs in the same
        transaction, so offsets and read model are cleared together or not at all (its
        exception is raised as itself). The read model's migration version is kept: clear
        rows, do not drop tables. Raises UnknownProjection."""

        def run(conn: sqlite3.Connection) -> outcome.Outcome[None]:
            _registered_entity_type(conn, projection)
            for table in ("projection_offset", "projection_entity"):
                conn.execute(f"DELETE FROM {table} WHERE projection_name = ?", (projection,))
            if clear_read_model is not None:
                clear_read_model(conn)
            return outcome.Value(None)

        def transaction(txn: WriteTransaction) -> outcome.Outcome[None] | None:
            return _in_savepoint(txn.connection, lambda: run(txn.connection))

        result = await self.database.write(transaction)
        assert result is not None
        result.unwrap()


def _register(conn: sqlite3.Connection, projection: str, entity_type: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO projection (projection_name, entity_type) VALUES (?, ?)",
        (projection, entity_type),
    )
    _check_entity_type(conn, projection, entity_type)


def _not_yet(projection: str, heads: dict[str, int], conn: sqlite3.Connection) -> dict[str, int]:
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


def _read_slice_offsets(
    conn: sqlite3.Connection, projection: str, slices: SliceRange
) -> dict[int, TimestampOffset]:
    rows = conn.execute(
        "SELECT slice, timestamp, seen FROM projection_offset WHERE projection_name = ? "
        "AND slice BETWEEN ? AND ?",
        (projection, slices.min, slices.max),
    )
    return {s: TimestampOffset(ts, _decode_seen(seen)) for s, ts, seen in rows}
