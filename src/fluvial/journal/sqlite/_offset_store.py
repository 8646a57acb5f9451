"""The SQLite offset store of projections, in the same file as the journal.

Offsets live next to the events and the handlers' own tables, so an exactly-once handler's
writes and the offsets that say "handled" commit in one transaction (`commit`). Rows are keyed
by projection name and slice. Every save compares and sets: an entity's stored seq nr must
still be the one the saving instance read, and the projection's generation (bumped by the
management calls that change offsets) the one it loaded, so a second instance of a
projection can never apply an event twice and a reset is never undone by a running one; and
a lease per projection and slice range (`acquire_lease`) refuses a second instance at start.

Every write goes through `write_in_savepoint`: a refusal raised in the writer thread comes
out on the trio side as itself.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.leases import Lease as Lease
from fluvial.core.offset_tracker import OffsetChanges, OffsetTracker, SeenEntity
from fluvial.core.projection_errors import (
    ProjectionConflict,
    ProjectionLeaseHeld,
    ReadModelMigrationFailed,
    read_model_too_new,
)
from fluvial.journal.sqlite._consumer_filters import SqliteConsumerFilters
from fluvial.journal.sqlite._database import SqliteDatabase
from fluvial.journal.sqlite._offset_management import OffsetManagement
from fluvial.journal.sqlite._offset_rows import (
    SEEN_ENTITY_COLUMNS,
    generation,
    read_slice_offsets,
    register_projection,
    registered_entity_type,
    users_sql,
    write_changes,
    write_in_savepoint,
)
from fluvial.journal.sqlite._transaction import WriteTransaction

T = TypeVar("T")


class SqliteOffsetStore(OffsetManagement, SqliteConsumerFilters):
    """Loads and saves projection offsets, holds their leases, and runs the transaction an
    exactly-once handler writes through; also the management API (`offsets`, `backlog`,
    `set_offset`, `skip_event`, `reset`, `wait_until_caught_up`), and a gRPC consumer's
    filters (`ConsumerFilterStore`).

    `clock` gives the seconds that leases expire by; every process sharing the file must use
    the same one (the wall clock, the default). It is called in the journal's writer thread,
    inside the write that takes or renews a lease. Management calls on a projection the file does
    not know raise UnknownProjection.
    """

    def __init__(self, database: SqliteDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.clock = clock

    async def register(self, projection: str, entity_type: str) -> None:
        """Make `projection`, a consumer of `entity_type` events, known to the store, e.g. to
        `set_offset` it before its first run (`serve_projection` registers it too). Raises
        UnknownProjection if the name is registered with another entity type."""
        await write_in_savepoint(
            self.database, lambda conn: register_projection(conn, projection, entity_type)
        )

    async def load(self, projection: str, slices: SliceRange, *, window: int) -> OffsetTracker:
        """The tracker of `projection` over `slices`, holding the entities seen within
        `window` microseconds before the resume point (older ones stay in the store), and
        the generation of the stored offsets (the tracker's changes are refused once a
        management call changed them). Raises UnknownProjection if it is not registered."""

        def query(conn: sqlite3.Connection) -> OffsetTracker:
            loaded = generation(conn, projection)
            offsets = read_slice_offsets(conn, projection, slices)
            tracker = OffsetTracker(slices, slice_offsets=offsets, window=window)
            horizon = tracker.resume_offset().timestamp - window
            rows = conn.execute(
                f"SELECT {SEEN_ENTITY_COLUMNS} FROM projection_entity "
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
                generation=loaded,
            )

        return await self.database.read(query)

    async def load_entity(self, projection: str, persistence_id: str) -> SeenEntity | None:
        """The stored state of one entity for `projection` (None: never seen)."""
        slice_ = slice_for(persistence_id)

        def query(conn: sqlite3.Connection) -> SeenEntity | None:
            row = conn.execute(
                f"SELECT {SEEN_ENTITY_COLUMNS} FROM projection_entity "
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
        the instance read (another instance stored some of these entities, or a management
        call changed the projection's offsets since it loaded them), `write` does not run,
        nothing is stored and ProjectionConflict is raised. `write` runs once per call, in
        the writer thread, through the connection it is given; if it raises, nothing of it
        or of the changes is stored and its exception is raised here as itself.
        """
        if changes.empty and write is None:
            return None

        def run(conn: sqlite3.Connection) -> T | None:
            if not write_changes(conn, projection, changes):
                raise ProjectionConflict.offsets_changed(projection, slices)
            return write(conn) if write is not None else None

        # The handler's transaction is its own: it never holds up other callers' appends.
        return await write_in_savepoint(self.database, run, alone=write is not None)

    async def migrate_read_model(
        self, projection: str, migrations: Sequence[Callable[[sqlite3.Connection], None]]
    ) -> None:
        """Bring the read model of `projection` to version `len(migrations)`: run, in one
        transaction, the migrations it has not run yet (the store keeps its version), so each
        runs once per file. A migration that raises undoes all: a sqlite3 error as
        ReadModelMigrationFailed (naming the migration), any other exception as itself;
        UsageError if the store holds a newer version than `migrations` reach."""

        def run(conn: sqlite3.Connection) -> None:
            registered_entity_type(conn, projection)
            (version,) = conn.execute(
                "SELECT read_model_version FROM projection WHERE projection_name = ?",
                (projection,),
            ).fetchone()
            if version > len(migrations):
                raise read_model_too_new(projection, version, len(migrations))
            for number, migration in enumerate(migrations[version:], start=version + 1):
                with users_sql(
                    conn, functools.partial(ReadModelMigrationFailed, projection, number)
                ):
                    migration(conn)
            conn.execute(
                "UPDATE projection SET read_model_version = ? WHERE projection_name = ?",
                (len(migrations), projection),
            )

        await write_in_savepoint(self.database, run, alone=True)

    async def acquire_lease(
        self, projection: str, entity_type: str, slices: SliceRange, *, owner: str, duration: float
    ) -> Lease:
        """Take the lease of `projection` over `slices` for `duration` seconds, for `owner`,
        registering the projection if it is new; an expired lease of an overlapping range is
        taken over. Raises ProjectionLeaseHeld if another owner holds a live lease of an
        overlapping range, UnknownProjection if `projection` consumes another entity type.
        The clock is read inside the write, so time spent waiting for the writer does not
        shorten the lease."""

        def write(conn: sqlite3.Connection) -> Lease:
            now = self.clock()
            register_projection(conn, projection, entity_type)
            holder = conn.execute(
                "SELECT owner, slice_min, slice_max, expires_at FROM projection_lease "
                "WHERE projection_name = ? AND slice_min <= ? AND slice_max >= ? "
                "AND owner != ? AND expires_at > ? ORDER BY expires_at DESC LIMIT 1",
                (projection, slices.max, slices.min, owner, now),
            ).fetchone()
            if holder is not None:
                owner_, slice_min, slice_max, expires_at = holder
                held = Lease(projection, SliceRange(slice_min, slice_max), owner_, expires_at)
                raise ProjectionLeaseHeld.by(slices, held, now)
            conn.execute(
                "DELETE FROM projection_lease WHERE projection_name = ? AND slice_min <= ? "
                "AND slice_max >= ?",
                (projection, slices.max, slices.min),
            )
            conn.execute(
                "INSERT INTO projection_lease VALUES (?,?,?,?,?)",
                (projection, slices.min, slices.max, owner, now + duration),
            )
            return Lease(projection, slices, owner, now + duration)

        return await write_in_savepoint(self.database, write)

    async def renew_lease(self, lease: Lease, duration: float) -> Lease:
        """Extend `lease` to `duration` seconds from now (read inside the write). Raises
        ProjectionConflict if its owner no longer holds it (another instance took it over
        after it expired)."""

        def write(conn: sqlite3.Connection) -> Lease:
            expires_at = self.clock() + duration
            renewed = conn.execute(
                "UPDATE projection_lease SET expires_at = ? WHERE projection_name = ? "
                "AND slice_min = ? AND slice_max = ? AND owner = ?",
                (expires_at, lease.projection, lease.slices.min, lease.slices.max, lease.owner),
            ).rowcount
            if renewed != 1:
                raise ProjectionConflict.lease_lost(lease.projection, lease.slices)
            return attrs.evolve(lease, expires_at=expires_at)

        return await write_in_savepoint(self.database, write)

    async def release_lease(self, lease: Lease) -> None:
        """Give `lease` up, so that another instance can start at once (no-op if lost)."""

        def write(txn: WriteTransaction) -> None:
            txn.connection.execute(
                "DELETE FROM projection_lease WHERE projection_name = ? AND slice_min = ? "
                "AND slice_max = ? AND owner = ?",
                (lease.projection, lease.slices.min, lease.slices.max, lease.owner),
            )

        await self.database.write(write)
