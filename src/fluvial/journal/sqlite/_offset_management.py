"""The management API of the SQLite offset store (`offsets`, `backlog`, `wait_until_caught_up`,
`set_offset`, `skip_event`, `reset`), a base of `SqliteOffsetStore`.

Each call on a projection the file does not know raises UnknownProjection. The writes go
through `write_in_savepoint` (a refusal raised in the writer thread comes out here as itself),
and each bumps the projection's generation, so that a running instance's next save fails with
ProjectionConflict instead of undoing them.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import ReadModelClearFailed, UnknownEvent, UnknownProjection
from fluvial.journal.sqlite._database import SqliteDatabase
from fluvial.journal.sqlite._offset_rows import (
    bump_generation,
    check_entity_type,
    not_yet,
    read_slice_offsets,
    registered_entity_type,
    save_slice_offsets,
    users_sql,
    write_in_savepoint,
)
from fluvial.journal.sqlite._schema import EVENTS_OF_ENTITY


class OffsetManagement:
    """What a user asks of the stored offsets of a projection: see the module docstring."""

    database: SqliteDatabase

    async def offsets(
        self, projection: str, slices: SliceRange | None = None
    ) -> dict[int, TimestampOffset]:
        """The stored offset of every slice of `projection` (in `slices`) that has one."""

        def query(conn: sqlite3.Connection) -> dict[int, TimestampOffset]:
            registered_entity_type(conn, projection)
            return read_slice_offsets(conn, projection, slices or SliceRange.all())

        return await self.database.read(query)

    async def backlog(self, projection: str, entity_type: str, slices: SliceRange) -> int:
        """How many events of `entity_type` in `slices` are behind the journal head for
        `projection` (per slice from its stored offset; all events where none is stored).
        Raises UnknownProjection unless `projection` is known and consumes `entity_type`."""

        def query(conn: sqlite3.Connection) -> int:
            check_entity_type(conn, projection, entity_type)
            offsets = read_slice_offsets(conn, projection, slices)
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
        entity type in `slices` (default: all) that the journal held when this was called,
        and its query has passed them (so `backlog` counts none of them).

        It waits on the instances that run the projection, wherever they run; bound it with
        a cancel scope (`trio.fail_after`). An at-least-once projection counts an event once
        its offset is saved (`save_every` / `save_after`). Raises UnknownProjection.
        """
        slices = slices or SliceRange.all()

        def heads(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[int, int]]:
            entity_type = registered_entity_type(conn, projection)
            entities = conn.execute(
                "SELECT persistence_id, max(seq_nr) FROM event_journal WHERE entity_type = ? "
                "AND slice BETWEEN ? AND ? GROUP BY persistence_id",
                (entity_type, slices.min, slices.max),
            ).fetchall()
            slice_heads = conn.execute(
                "SELECT slice, max(db_timestamp) FROM event_journal WHERE entity_type = ? "
                "AND slice BETWEEN ? AND ? GROUP BY slice",
                (entity_type, slices.min, slices.max),
            ).fetchall()
            return dict(entities), dict(slice_heads)

        def behind(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[int, int]]:
            offsets = read_slice_offsets(conn, projection, slices)
            slices_behind = {
                s: head
                for s, head in waiting_slices.items()
                if s not in offsets or offsets[s].timestamp < head
            }
            return not_yet(projection, waiting, conn), slices_behind

        waiting, waiting_slices = await self.database.read(heads)
        while True:
            seen = self.database.commit_count()
            waiting, waiting_slices = await self.database.read(behind)
            if not waiting and not waiting_slices:
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
        while the projection is stopped: a running instance stops with ProjectionConflict
        at its next save.
        Raises UnknownProjection."""

        def write(conn: sqlite3.Connection) -> None:
            entity_type = registered_entity_type(conn, projection)
            bump_generation(conn, projection)
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
            save_slice_offsets(conn, projection, {s: offset for s in slices})

        await write_in_savepoint(self.database, write)

    async def skip_event(self, projection: str, persistence_id: str, seq_nr: int) -> None:
        """Mark an entity's events up to `seq_nr` as handled, e.g. to get past a poison
        event (`ProjectionFailed` names it). Never moves an entity backwards. Call it while
        the projection is stopped (or failing): a running instance stops with
        ProjectionConflict at its next save. Raises UnknownProjection, or UnknownEvent if
        the journal has no such event."""

        def write(conn: sqlite3.Connection) -> None:
            entity_type = registered_entity_type(conn, projection)
            row = conn.execute(
                f"SELECT slice, db_timestamp, entity_type FROM event_journal "
                f"WHERE {EVENTS_OF_ENTITY} AND seq_nr = ?",
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
                "INSERT INTO projection_entity (projection_name, persistence_id, slice, seq_nr,"
                " timestamp) VALUES (?,?,?,?,?)"
                " ON CONFLICT (projection_name, slice, persistence_id)"
                " DO UPDATE SET seq_nr = max(seq_nr, excluded.seq_nr),"
                " timestamp = max(timestamp, excluded.timestamp),"
                # the placeholders up to seq_nr are settled (the right side reads the old row)
                " placeholders = max(seq_nr, excluded.seq_nr)"
                " - max(seq_nr - placeholders, excluded.seq_nr)",
                (projection, persistence_id, slice_, seq_nr, timestamp),
            )
            bump_generation(conn, projection)

        await write_in_savepoint(self.database, write)

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
        transaction, so offsets and read model are cleared together or not at all (a
        sqlite3 error of it is raised as ReadModelClearFailed, any other exception as
        itself). The read model's migration version is kept: clear rows, do not drop
        tables. Call it while the projection is stopped: a running instance stops with
        ProjectionConflict at its next save. Raises UnknownProjection."""

        def run(conn: sqlite3.Connection) -> None:
            registered_entity_type(conn, projection)
            bump_generation(conn, projection)
            for table in ("projection_offset", "projection_entity"):
                conn.execute(f"DELETE FROM {table} WHERE projection_name = ?", (projection,))
            if clear_read_model is not None:
                with users_sql(conn, functools.partial(ReadModelClearFailed, projection)):
                    clear_read_model(conn)

        await write_in_savepoint(self.database, run, alone=clear_read_model is not None)
