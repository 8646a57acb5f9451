"""A gRPC consumer's filters in the SQLite file: one row per stream id (`consumer_filter`),
the filter as its JSON (`Filter.to_json`). The offset store takes these methods, so the filter
lives in the database the consumer's offsets and read model live in."""

from __future__ import annotations

import sqlite3

from fluvial.core.filters import Filter, FilterCriteriaUpdate, criteria_of
from fluvial.journal.sqlite._database import SqliteDatabase
from fluvial.journal.sqlite._offset_rows import write_in_savepoint


def _stored(conn: sqlite3.Connection, stream_id: str) -> Filter | None:
    row = conn.execute(
        "SELECT filter FROM consumer_filter WHERE stream_id = ?", (stream_id,)
    ).fetchone()
    return None if row is None else Filter.from_json(row[0])


def _store(conn: sqlite3.Connection, stream_id: str, filter: Filter) -> None:
    conn.execute(
        "INSERT INTO consumer_filter (stream_id, filter) VALUES (?, ?) "
        "ON CONFLICT (stream_id) DO UPDATE SET filter = excluded.filter",
        (stream_id, filter.to_json().decode()),
    )


class SqliteConsumerFilters:
    """`ConsumerFilterStore` over the file of `database` (see the module docstring)."""

    database: SqliteDatabase

    async def load_consumer_filter(self, stream_id: str) -> Filter | None:
        """The stored filter of `stream_id` (None: none was ever stored)."""
        return await self.database.read(lambda conn: _stored(conn, stream_id))

    async def update_consumer_filter(
        self, stream_id: str, update: FilterCriteriaUpdate
    ) -> tuple[Filter, Filter]:
        """Fold `update` into the stored filter of `stream_id`, in one transaction: the
        filters before and after."""
        criteria = criteria_of(update)  # checked here, not in the writer thread

        def fold(conn: sqlite3.Connection) -> tuple[Filter, Filter]:
            before = _stored(conn, stream_id) or Filter()
            after = before.updated(criteria)
            _store(conn, stream_id, after)
            return before, after

        return await write_in_savepoint(self.database, fold)

    async def save_consumer_filter(self, stream_id: str, filter: Filter) -> None:
        """Store `filter` as the filter of `stream_id`."""
        await write_in_savepoint(self.database, lambda conn: _store(conn, stream_id, filter))
