"""The PostgreSQL offset store of projections, in the journal's schema.

Offsets live next to the events and the handlers' own tables, so an exactly-once handler's
writes and the offsets that say "handled" commit in one transaction (`commit`): the handler
gets the psycopg connection of that transaction, in the pool's worker thread. Every save
compares and sets (`_offset_rows.py`), so instances in several processes never apply an event
twice and a management call is never undone by a running one; leases per projection and slice
range, on the database's clock unless the store is given one, refuse a second instance.

Each call's transaction runs whole in a worker thread (`ConnectionPool`): an exception raised
in it rolls it back and comes out here as itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import attrs

from fluvial._wakeup import Signal
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.leases import Lease
from fluvial.core.offset_tracker import OffsetChanges, OffsetTracker, SeenEntity
from fluvial.core.projection_errors import (
    ProjectionConflict,
    ProjectionLeaseHeld,
    ReadModelMigrationFailed,
    read_model_too_new,
)
from fluvial.journal.postgres._consumer_filters import PostgresConsumerFilters
from fluvial.journal.postgres._event_rows import Connection
from fluvial.journal.postgres._offset_management import PostgresOffsetManagement
from fluvial.journal.postgres._offset_rows import (
    SEEN_ENTITY_COLUMNS,
    generation,
    read_model_version,
    read_slice_offsets,
    register_projection,
    users_sql,
    write_changes,
)

if TYPE_CHECKING:  # the journal imports this module for `offset_store()`
    from fluvial.journal.postgres._journal import PostgresJournal

T = TypeVar("T")


class PostgresOffsetStore(PostgresOffsetManagement, PostgresConsumerFilters):
    """Loads and saves projection offsets in the schema of `journal`, holds their leases, and
    runs the transaction an exactly-once handler writes through (the psycopg connection); also
    the management API (`offsets`, `backlog`, `set_offset`, `skip_event`, `reset`,
    `wait_until_caught_up`) and a gRPC consumer's filters (`ConsumerFilterStore`). Any
    number of processes share it through the database.

    `PostgresJournal.offset_store()` is the journal's own (on the database's clock). `clock`
    gives the seconds that leases expire by; None (the default) reads the database server's
    clock inside the write, one clock for every process. Management calls on a projection the
    schema does not know raise UnknownProjection.
    """

    def __init__(
        self, journal: PostgresJournal, *, clock: Callable[[], float] | None = None
    ) -> None:
        self._pool = journal._pool  # the journal's: its connections, and closed with it
        self._poll_interval = journal._poll_interval
        self._clock = clock
        # Counts this process's commits of offsets: waiters here wake at once, others poll.
        self._commits = Signal()

    async def register(self, projection: str, entity_type: str) -> None:
        """Make `projection`, a consumer of `entity_type` events, known to the store, e.g. to
        `set_offset` it before its first run (`serve_projection` registers it too). Raises
        UnknownProjection if the name is registered with another entity type."""
        await self._run(
            functools.partial(register_projection, projection=projection, entity_type=entity_type)
        )

    async def load(self, projection: str, slices: SliceRange, *, window: int) -> OffsetTracker:
        """The tracker of `projection` over `slices`, holding the entities seen within
        `window` microseconds before the resume point (older ones stay in the store), and
        the generation of the stored offsets. Raises UnknownProjection."""

        def query(conn: Connection) -> OffsetTracker:
            # The generation first: a management call after it makes this tracker's saves fail.
            loaded = generation(conn, projection)
            offsets = read_slice_offsets(conn, projection, slices)
            tracker = OffsetTracker(slices, slice_offsets=offsets, window=window)
            horizon = tracker.resume_offset().timestamp - window
            where = "WHERE projection_name = %s AND slice BETWEEN %s AND %s AND timestamp"
            parameters = (projection, slices.min, slices.max, horizon)
            rows = conn.execute(
                f"SELECT {SEEN_ENTITY_COLUMNS} FROM projection_entity {where} >= %s", parameters
            ).fetchall()
            older = conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM projection_entity {where} < %s)", parameters
            ).fetchone()
            return OffsetTracker(
                slices,
                slice_offsets=offsets,
                entities=[SeenEntity(*row) for row in rows],
                window=window,
                complete=not (older and older[0]),
                generation=loaded,
            )

        return await self._run(query)

    async def load_entity(self, projection: str, persistence_id: str) -> SeenEntity | None:
        """The stored state of one entity for `projection` (None: never seen)."""

        def query(conn: Connection) -> SeenEntity | None:
            row = conn.execute(
                f"SELECT {SEEN_ENTITY_COLUMNS} FROM projection_entity "
                "WHERE projection_name = %s AND slice = %s AND persistence_id = %s",
                (projection, slice_for(persistence_id), persistence_id),
            ).fetchone()
            return SeenEntity(*row) if row else None

        return await self._run(query)

    async def save(self, projection: str, slices: SliceRange, changes: OffsetChanges) -> None:
        """Store `changes` of the instance over `slices`; raises ProjectionConflict (and
        stores nothing) if the stored offsets are not the ones it read."""
        await self.commit(projection, slices, changes, None)

    async def commit(
        self,
        projection: str,
        slices: SliceRange,
        changes: OffsetChanges,
        write: Callable[[Connection], T] | None,
    ) -> T | None:
        """Store `changes` and run `write` (an exactly-once handler's writes) in one
        transaction, so both commit or neither; return what `write` returned.

        The changes are compared and set first: if the store no longer holds the offsets the
        instance read, `write` does not run, nothing is stored and ProjectionConflict is
        raised. `write` runs once per call, in a worker thread, with the psycopg connection
        of the transaction (do not commit it, nor keep it past the call); if it raises,
        nothing is stored and its exception is raised here as itself.
        """
        if changes.empty and write is None:
            return None

        def run(conn: Connection) -> T | None:
            if not write_changes(conn, projection, changes):
                raise ProjectionConflict.offsets_changed(projection, slices)
            return write(conn) if write is not None else None

        result = await self._run(run)
        self._commits.notify()
        return result

    async def migrate_read_model(
        self, projection: str, migrations: Sequence[Callable[[Connection], None]]
    ) -> None:
        """Bring the read model of `projection` to version `len(migrations)`: run, in one
        transaction, the migrations it has not run yet (the store keeps its version, and one
        process at a time migrates), so each runs once per schema. A migration that raises
        undoes all: a psycopg error as ReadModelMigrationFailed (naming the migration), any
        other exception as itself; UsageError if the store holds a newer version than
        `migrations` reach."""

        def run(conn: Connection) -> None:
            version = read_model_version(conn, projection)
            if version > len(migrations):
                raise read_model_too_new(projection, version, len(migrations))
            for number, migration in enumerate(migrations[version:], start=version + 1):
                with users_sql(
                    conn, functools.partial(ReadModelMigrationFailed, projection, number)
                ):
                    migration(conn)
            conn.execute(
                "UPDATE projection SET read_model_version = %s WHERE projection_name = %s",
                (len(migrations), projection),
            )

        await self._run(run)

    def _now(self, conn: Connection) -> float:
        """The lease clock's time, read inside the write (waiting for a connection does not
        shorten a lease)."""
        if self._clock is not None:
            return self._clock()
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])

    async def acquire_lease(
        self, projection: str, entity_type: str, slices: SliceRange, *, owner: str, duration: float
    ) -> Lease:
        """Take the lease of `projection` over `slices` for `duration` seconds, for `owner`,
        registering the projection if it is new; an expired lease of an overlapping range is
        taken over. Raises ProjectionLeaseHeld if another owner holds a live lease of an
        overlapping range, UnknownProjection if `projection` consumes another entity type."""

        def write(conn: Connection) -> Lease:
            register_projection(conn, projection, entity_type)
            # Takers of one projection's leases take turns (the lock of its row), so two
            # processes never both see the range free.
            conn.execute(
                "SELECT 1 FROM projection WHERE projection_name = %s FOR UPDATE", (projection,)
            )
            now = self._now(conn)
            holder = conn.execute(
                "SELECT owner, slice_min, slice_max, expires_at FROM projection_lease "
                "WHERE projection_name = %s AND slice_min <= %s AND slice_max >= %s "
                "AND owner != %s AND expires_at > %s ORDER BY expires_at DESC LIMIT 1",
                (projection, slices.max, slices.min, owner, now),
            ).fetchone()
            if holder is not None:
                owner_, slice_min, slice_max, expires_at = holder
                held = Lease(projection, SliceRange(slice_min, slice_max), owner_, expires_at)
                raise ProjectionLeaseHeld.by(slices, held, now)
            conn.execute(
                "DELETE FROM projection_lease WHERE projection_name = %s AND slice_min <= %s "
                "AND slice_max >= %s",
                (projection, slices.max, slices.min),
            )
            conn.execute(
                "INSERT INTO projection_lease VALUES (%s, %s, %s, %s, %s)",
                (projection, slices.min, slices.max, owner, now + duration),
            )
            return Lease(projection, slices, owner, now + duration)

        return await self._run(write)

    async def renew_lease(self, lease: Lease, duration: float) -> Lease:
        """Extend `lease` to `duration` seconds from now (read inside the write). Raises
        ProjectionConflict if its owner no longer holds it (another instance took it over
        after it expired)."""

        def write(conn: Connection) -> Lease:
            expires_at = self._now(conn) + duration
            renewed = conn.execute(
                "UPDATE projection_lease SET expires_at = %s WHERE projection_name = %s "
                "AND slice_min = %s AND slice_max = %s AND owner = %s",
                (expires_at, lease.projection, lease.slices.min, lease.slices.max, lease.owner),
            ).rowcount
            if renewed != 1:
                raise ProjectionConflict.lease_lost(lease.projection, lease.slices)
            return attrs.evolve(lease, expires_at=expires_at)

        return await self._run(write)

    async def release_lease(self, lease: Lease) -> None:
        """Give `lease` up, so that another instance can start at once (no-op if lost)."""

        def write(conn: Connection) -> None:
            conn.execute(
                "DELETE FROM projection_lease WHERE projection_name = %s AND slice_min = %s "
                "AND slice_max = %s AND owner = %s",
                (lease.projection, lease.slices.min, lease.slices.max, lease.owner),
            )

        await self._run(write)
