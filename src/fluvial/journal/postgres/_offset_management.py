"""The management API of the PostgreSQL offset store (`offsets`, `backlog`,
`wait_until_caught_up`, `set_offset`, `skip_event`, `reset`), a base of `PostgresOffsetStore`.

Each call on a projection the schema does not know raises UnknownProjection. Each write is
one transaction on a pool connection and bumps the projection's generation, so that a running
instance's next save, in whichever process, fails with ProjectionConflict instead of undoing
it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from fluvial._wakeup import Signal
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import ReadModelClearFailed, UnknownEvent, UnknownProjection
from fluvial.journal.postgres._event_rows import Connection
from fluvial.journal.postgres._offset_rows import (
    bump_generation,
    check_entity_type,
    not_yet,
    read_slice_offsets,
    registered_entity_type,
    save_slice_offsets,
    users_sql,
)
from fluvial.journal.postgres._pool import ConnectionPool

T = TypeVar("T")

# An entity's row moved on to `seq_nr` (never back), the placeholders up to it settled (the
# right-hand sides read the old row).
_MOVE_ENTITY_ON = (
    "ON CONFLICT (projection_name, slice, persistence_id) DO UPDATE SET "
    "seq_nr = greatest(projection_entity.seq_nr, excluded.seq_nr), "
    "timestamp = greatest(projection_entity.timestamp, excluded.timestamp)"
)


class PostgresOffsetManagement:
    """What a user asks of the stored offsets of a projection: see the module docstring."""

    _pool: ConnectionPool
    _poll_interval: float
    _commits: Signal

    async def _run(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in one transaction, in a pool worker thread."""

        def whole(conn: Connection) -> T:
            with conn.transaction():
                return work(conn)

        return await self._pool.run(whole)

    async def offsets(
        self, projection: str, slices: SliceRange | None = None
    ) -> dict[int, TimestampOffset]:
        """The stored offset of every slice of `projection` (in `slices`) that has one."""

        def query(conn: Connection) -> dict[int, TimestampOffset]:
            registered_entity_type(conn, projection)
            return read_slice_offsets(conn, projection, slices or SliceRange.all())

        return await self._run(query)

    async def backlog(self, projection: str, entity_type: str, slices: SliceRange) -> int:
        """How many events of `entity_type` in `slices` are behind the journal head for
        `projection` (per slice from its stored offset; all events where none is stored).
        Raises UnknownProjection unless `projection` is known and consumes `entity_type`."""

        def query(conn: Connection) -> int:
            check_entity_type(conn, projection, entity_type)
            row = conn.execute(
                "SELECT count(*) FROM event_journal AS e LEFT JOIN projection_offset AS o "
                "ON o.projection_name = %s AND o.slice = e.slice WHERE e.entity_type = %s "
                "AND e.slice BETWEEN %s AND %s "
                "AND (o.timestamp IS NULL OR e.db_timestamp > o.timestamp)",
                (projection, entity_type, slices.min, slices.max),
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._run(query)

    async def wait_until_caught_up(self, projection: str, slices: SliceRange | None = None) -> None:
        """Return once `projection` has handled (and stored the offset of) every event of its
        entity type in `slices` (default: all) that the journal held when this was called,
        and its query has passed them (so `backlog` counts none of them).

        It waits on the instances that run the projection, in whichever process: this
        process's commits wake it, others' are seen by polling (the journal's
        `poll_interval`). Bound it with a cancel scope (`trio.fail_after`). Raises
        UnknownProjection."""
        slices = slices or SliceRange.all()

        def heads(conn: Connection) -> tuple[dict[str, int], dict[int, int]]:
            entity_type = registered_entity_type(conn, projection)
            where = "WHERE entity_type = %s AND slice BETWEEN %s AND %s"
            parameters = (entity_type, slices.min, slices.max)
            entities = conn.execute(
                f"SELECT persistence_id, max(seq_nr) FROM event_journal {where} "
                "GROUP BY persistence_id",
                parameters,
            ).fetchall()
            slice_heads = conn.execute(
                f"SELECT slice, max(db_timestamp) FROM event_journal {where} GROUP BY slice",
                parameters,
            ).fetchall()
            return dict(entities), dict(slice_heads)

        def behind(conn: Connection) -> tuple[dict[str, int], dict[int, int]]:
            offsets = read_slice_offsets(conn, projection, slices)
            slices_behind = {
                s: head
                for s, head in waiting_slices.items()
                if s not in offsets or offsets[s].timestamp < head
            }
            return not_yet(conn, projection, waiting), slices_behind

        waiting, waiting_slices = await self._run(heads)
        while True:
            seen = self._commits.count
            waiting, waiting_slices = await self._run(behind)
            if not waiting and not waiting_slices:
                return
            await self._commits.wait(seen, at_most=self._poll_interval)

    async def set_offset(
        self, projection: str, slices: SliceRange, offset: TimestampOffset
    ) -> None:
        """Resume every slice in `slices` from `offset`: the events the journal holds before
        it count as handled and those after it as not, so each entity's first event after
        `offset` is the next one handled, whichever path brings it. Moving an offset back
        makes the projection handle the events after it again.

        It records, per entity of those slices, its last seq nr before `offset`. Call it
        while the projection is stopped: a running instance stops with ProjectionConflict
        at its next save. Raises UnknownProjection."""

        def write(conn: Connection) -> None:
            entity_type = registered_entity_type(conn, projection)
            bump_generation(conn, projection)
            in_slices = (projection, slices.min, slices.max)
            conn.execute(
                "DELETE FROM projection_entity WHERE projection_name = %s "
                "AND slice BETWEEN %s AND %s",
                in_slices,
            )
            conn.execute(
                "INSERT INTO projection_entity "
                "(projection_name, persistence_id, slice, seq_nr, timestamp) "
                "SELECT %s, persistence_id, slice, max(seq_nr), max(db_timestamp) "
                "FROM event_journal WHERE entity_type = %s AND slice BETWEEN %s AND %s "
                "AND db_timestamp < %s GROUP BY persistence_id, slice",
                (projection, entity_type, slices.min, slices.max, offset.timestamp),
            )
            seen = list(offset.seen.items())  # seen at the offset's own timestamp
            conn.execute(
                "INSERT INTO projection_entity "
                "(projection_name, persistence_id, slice, seq_nr, timestamp) "
                "SELECT %s, e.persistence_id, e.slice, e.seq_nr, e.db_timestamp "
                "FROM event_journal AS e JOIN unnest(%s::text[], %s::bigint[]) AS s(pid, seq_nr) "
                "ON e.persistence_id = s.pid AND e.seq_nr = s.seq_nr "
                f"WHERE e.slice BETWEEN %s AND %s {_MOVE_ENTITY_ON}",
                (projection, [p for p, _ in seen], [n for _, n in seen], slices.min, slices.max),
            )
            save_slice_offsets(conn, projection, {s: offset for s in slices})

        await self._run(write)

    async def skip_event(self, projection: str, persistence_id: str, seq_nr: int) -> None:
        """Mark an entity's events up to `seq_nr` as handled, e.g. to get past a poison
        event (`ProjectionFailed` names it). Never moves an entity backwards. Call it while
        the projection is stopped (or failing): a running instance stops with
        ProjectionConflict at its next save. Raises UnknownProjection, or UnknownEvent if
        the journal has no such event."""

        def write(conn: Connection) -> None:
            entity_type = registered_entity_type(conn, projection)
            row = conn.execute(
                "SELECT slice, db_timestamp, entity_type FROM event_journal "
                "WHERE persistence_id = %s AND seq_nr = %s",
                (persistence_id, seq_nr),
            ).fetchone()
            if row is None:
                raise UnknownEvent(persistence_id, seq_nr)
            slice_, timestamp, event_type = row
            if event_type != entity_type:
                raise UnknownProjection.event_of_another_type(
                    projection, entity_type, persistence_id, event_type
                )
            conn.execute(
                "INSERT INTO projection_entity (projection_name, persistence_id, slice, seq_nr, "
                f"timestamp) VALUES (%s, %s, %s, %s, %s) {_MOVE_ENTITY_ON}, placeholders = "
                "greatest(projection_entity.seq_nr, excluded.seq_nr) - greatest("
                "projection_entity.seq_nr - projection_entity.placeholders, excluded.seq_nr)",
                (projection, persistence_id, slice_, seq_nr, timestamp),
            )
            bump_generation(conn, projection)

        await self._run(write)

    async def reset(
        self, projection: str, *, clear_read_model: Callable[[Connection], None] | None = None
    ) -> None:
        """Forget the offsets of `projection`: it starts again from the first event.

        The read model is kept: an exactly-once projection that runs again applies every
        event once more on top of it. To rebuild it, pass `clear_read_model`, a function
        that empties its tables through the psycopg connection it gets; it runs in the same
        transaction, so offsets and read model are cleared together or not at all (a
        psycopg error of it is raised as ReadModelClearFailed, any other exception as
        itself). The read model's migration version is kept: clear rows, do not drop
        tables. Call it while the projection is stopped: a running instance stops with
        ProjectionConflict at its next save. Raises UnknownProjection."""

        def run(conn: Connection) -> None:
            registered_entity_type(conn, projection)
            bump_generation(conn, projection)
            for table in ("projection_offset", "projection_entity"):
                conn.execute(f"DELETE FROM {table} WHERE projection_name = %s", (projection,))
            if clear_read_model is not None:
                with users_sql(conn, functools.partial(ReadModelClearFailed, projection)):
                    clear_read_model(conn)

        await self._run(run)
