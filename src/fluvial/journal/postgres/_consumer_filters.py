"""A gRPC consumer's filters in the PostgreSQL schema: one row per stream id
(`consumer_filter`), the filter as its JSON (`Filter.to_json`), next to the consumer's offsets."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fluvial.core.filters import Filter, FilterCriteriaUpdate, criteria_of
from fluvial.journal.postgres._event_rows import Connection

T = TypeVar("T")


def _stored(conn: Connection, stream_id: str, *, lock: bool = False) -> Filter | None:
    row = conn.execute(
        "SELECT filter FROM consumer_filter WHERE stream_id = %s" + (" FOR UPDATE" if lock else ""),
        (stream_id,),
    ).fetchone()
    return None if row is None else Filter.from_json(row[0])


def _store(conn: Connection, stream_id: str, filter: Filter) -> None:
    conn.execute(
        "INSERT INTO consumer_filter (stream_id, filter) VALUES (%s, %s) "
        "ON CONFLICT (stream_id) DO UPDATE SET filter = excluded.filter",
        (stream_id, filter.to_json().decode()),
    )


class PostgresConsumerFilters:
    """`ConsumerFilterStore` in the schema the store's `_run` works in."""

    async def _run(self, work: Callable[[Connection], T]) -> T:
        raise NotImplementedError  # the offset store's: one transaction in a worker thread

    async def load_consumer_filter(self, stream_id: str) -> Filter | None:
        """The stored filter of `stream_id` (None: none was ever stored)."""
        return await self._run(lambda conn: _stored(conn, stream_id))

    async def update_consumer_filter(
        self, stream_id: str, update: FilterCriteriaUpdate
    ) -> tuple[Filter, Filter]:
        """Fold `update` into the stored filter of `stream_id`, in one transaction (the row
        locked, so that two processes' updates fold one after the other): before and after."""
        criteria = criteria_of(update)

        def fold(conn: Connection) -> tuple[Filter, Filter]:
            # A first row for the stream id, so that there is one to lock.
            conn.execute(
                "INSERT INTO consumer_filter (stream_id, filter) VALUES (%s, %s) "
                "ON CONFLICT (stream_id) DO NOTHING",
                (stream_id, Filter().to_json().decode()),
            )
            before = _stored(conn, stream_id, lock=True) or Filter()
            after = before.updated(criteria)
            _store(conn, stream_id, after)
            return before, after

        return await self._run(fold)

    async def save_consumer_filter(self, stream_id: str, filter: Filter) -> None:
        """Store `filter` as the filter of `stream_id`."""
        await self._run(lambda conn: _store(conn, stream_id, filter))
