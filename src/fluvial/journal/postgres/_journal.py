"""The PostgreSQL journal and snapshot store, on a pool of psycopg connections.

The transactions live by job (event rows in _event_rows.py, the group commit of appends in
_group_commit.py and _batched_appends.py, snapshots in _snapshots.py); this class runs them on
the pool and tells waiting followers what this process committed. Other processes' commits
are found by polling (`poll_interval`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import outcome
import trio
from msgspec.structs import replace

from fluvial._wakeup import Signal
from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import (
    EventRecord,
    SnapshotRecord,
    check_append_batch,
    check_from_elsewhere,
)
from fluvial.journal.api import MAX_SEQ_NR, MAX_TIMESTAMP, EventStored, WriteFromElsewhereResult
from fluvial.journal.postgres import _event_rows, _snapshots
from fluvial.journal.postgres._event_rows import (
    CLOCK_NOW,
    EVENT_COLUMNS,
    EVENT_COLUMNS_NOT_FROM_ORIGIN,
    EVENT_COLUMNS_WITHOUT_PAYLOAD,
    EVENTS_BY_SLICES,
    HIGHEST_SEQ_NR,
    Connection,
    event_from_row,
    unseen,
)
from fluvial.journal.postgres._group_commit import GroupCommit
from fluvial.journal.postgres._offset_store import PostgresOffsetStore
from fluvial.journal.postgres._pool import ConnectionPool
from fluvial.journal.postgres._schema import check_schema_name, migrate
from fluvial.journal.queries import by_slices_parameters
from fluvial.nursery_errors import open_service_nursery

# Group commit (see _group_commit.py): the defaults of `open_postgres_journal`'s transactions
# of appends in flight at once (fewer if the pool is smaller), and of the appends one may hold
# (docs/postgres.md, "Choosing writers and the batch").
WRITERS = 4
MAX_APPENDS_PER_TRANSACTION = 500


class PostgresJournal:
    """Journal, SnapshotStore and WriteFromElsewhere in one PostgreSQL schema, shared with any
    number of processes, with projection offsets in the same schema (`offset_store()`); see
    `open_postgres_journal`. Its writers are concurrent (`HasConcurrentWriters`): projections
    read it behind the server's clock and backtrack."""

    def __init__(
        self,
        pool: ConnectionPool,
        poll_interval: float,
        schema: str,
        *,
        writers: int = WRITERS,
        max_appends_per_transaction: int = MAX_APPENDS_PER_TRANSACTION,
    ) -> None:
        self._pool = pool
        self._poll_interval = poll_interval
        # Counts this process's appends: followers here wake at once, others poll.
        self._appends = Signal()
        # This process's last timestamp: its next appends get later ones (see _event_rows.py).
        self._last_timestamp = 0
        self._offset_store: PostgresOffsetStore | None = None
        self._group_commit = GroupCommit(
            pool,
            name=schema,
            writers=writers,
            max_appends=max_appends_per_transaction,
            floor=lambda: self._last_timestamp + 1,
            stamped=self._stamped,
            committed=self._appends.notify,
        )

    def offset_store(self) -> PostgresOffsetStore:
        """The journal's offset store, in its schema, on the database server's clock (the same
        one on every call): `serve_projection(journal, ...)` keeps offsets there unless given
        another store. Make a `PostgresOffsetStore` for one on another clock."""
        if self._offset_store is None:
            self._offset_store = PostgresOffsetStore(self)
        return self._offset_store

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """See `Journal.append`."""
        check_append_batch(events)
        if not events:
            await trio.lowlevel.checkpoint()
            return []
        return await self._group_commit.append(events)

    def append_soon(
        self,
        events: Sequence[EventRecord],
        on_done: Callable[[outcome.Outcome[Sequence[EventRecord]]], None],
    ) -> None:
        """See `AppendSoon.append_soon`: the entity runtime's way in, no task parked."""
        check_append_batch(events)
        if not events:
            on_done(outcome.Value([]))
            return
        self._group_commit.append_soon(events, on_done)

    async def write_from_elsewhere(
        self, events: Sequence[EventRecord]
    ) -> list[WriteFromElsewhereResult]:
        """See `WriteFromElsewhere.write_from_elsewhere`."""
        check_from_elsewhere(events)
        if not events:
            return []
        # Idempotent: run again after a lost connection, what the first run stored is
        # answered EventAlreadyStored.
        decision, first = await self._pool.run(
            functools.partial(
                _event_rows.write_from_elsewhere, events=events, floor=self._last_timestamp + 1
            ),
            idempotent=True,
        )
        stamped = iter(self._appended_at(decision.stored, first) if decision.stored else [])
        return [
            EventStored(next(stamped)) if verdict is None else verdict
            for verdict in decision.verdicts
        ]

    def _appended_at(self, events: Sequence[EventRecord], first: int) -> list[EventRecord]:
        stamped = self._stamped(events, first)
        self._appends.notify()
        return stamped

    def _stamped(self, events: Sequence[EventRecord], first: int) -> list[EventRecord]:
        """`events` as stored from timestamp `first` on; later appends get later ones."""
        stamped = [
            replace(e, timestamp=first + i, write_timestamp=e.write_timestamp or first + i)
            for i, e in enumerate(events)
        ]
        self._last_timestamp = max(self._last_timestamp, stamped[-1].timestamp)
        return stamped

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        """See `Journal.read_events`."""

        def query(conn: Connection) -> list[EventRecord]:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM event_journal WHERE persistence_id = %s "
                "AND seq_nr BETWEEN %s AND %s ORDER BY seq_nr LIMIT %s",
                (persistence_id, from_seq_nr, to_seq_nr, limit),
            ).fetchall()
            return [event_from_row(row) for row in rows]

        return await self._pool.run(query, idempotent=True)

    async def highest_seq_nr(self, persistence_id: str) -> int:
        """See `Journal.highest_seq_nr`."""

        def query(conn: Connection) -> int:
            row = conn.execute(HIGHEST_SEQ_NR, (persistence_id,)).fetchone()
            return int(row[0]) if row else 0

        return await self._pool.run(query, idempotent=True)

    async def read_events_by_slices(
        self,
        entity_type: str,
        slices: SliceRange,
        after: TimestampOffset,
        limit: int,
        *,
        to_timestamp: int = MAX_TIMESTAMP,
        with_payloads: bool = True,
        exclude_origin: str | None = None,
    ) -> list[EventRecord]:
        """See `Journal.read_events_by_slices`."""
        if not with_payloads:
            columns = EVENT_COLUMNS_WITHOUT_PAYLOAD
        elif exclude_origin is not None:
            columns = EVENT_COLUMNS_NOT_FROM_ORIGIN
        else:
            columns = EVENT_COLUMNS
        parameters = by_slices_parameters(
            entity_type, slices, after, limit, to_timestamp, exclude_origin
        )

        def query(conn: Connection) -> list[EventRecord]:
            rows = conn.execute(EVENTS_BY_SLICES.format(columns=columns), parameters).fetchall()
            return unseen(after, [event_from_row(row) for row in rows], limit)

        return await self._pool.run(query, idempotent=True)

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """See `Journal.load_event`."""

        def query(conn: Connection) -> EventRecord | None:
            row = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM event_journal WHERE persistence_id = %s "
                "AND seq_nr = %s",
                (persistence_id, seq_nr),
            ).fetchone()
            return None if row is None else event_from_row(row)

        return await self._pool.run(query, idempotent=True)

    async def latest_event_timestamp(self, entity_type: str, slices: SliceRange) -> int | None:
        """See `Journal.latest_event_timestamp`."""
        parameters = {"entity_type": entity_type, "min": slices.min, "max": slices.max}

        def query(conn: Connection) -> int | None:
            row = conn.execute(_event_rows.LATEST_EVENT_TIMESTAMP, parameters).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._pool.run(query, idempotent=True)

    async def current_timestamp(self) -> int:
        """See `HasConcurrentWriters.current_timestamp`: the server's `clock_timestamp()`,
        what appends stamp their events with (docs/postgres.md, "Concurrent writers")."""

        def query(conn: Connection) -> int:
            row = conn.execute(CLOCK_NOW).fetchone()
            assert row is not None
            return int(row[0])

        return await self._pool.run(query)

    def append_count(self) -> int:
        """See `Journal.append_count`."""
        return self._appends.count

    async def wait_for_new_events(self, seen_append_count: int) -> None:
        """See `Journal.wait_for_new_events`."""
        # Other processes' commits wake nobody here: look again after the polling interval.
        await self._appends.wait(seen_append_count, at_most=self._poll_interval)

    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        """See `SnapshotStore.save_snapshot`."""
        await self._pool.run(
            functools.partial(_snapshots.save_snapshot, snapshot=snapshot, keep=keep),
            idempotent=True,  # an upsert: a second run stores the same
        )

    async def load_snapshot(
        self, persistence_id: str, max_seq_nr: int = MAX_SEQ_NR
    ) -> SnapshotRecord | None:
        """See `SnapshotStore.load_snapshot`."""
        return await self._pool.run(
            functools.partial(
                _snapshots.load_snapshot, persistence_id=persistence_id, max_seq_nr=max_seq_nr
            ),
            idempotent=True,
        )

    async def read_snapshots_by_slices(
        self, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
    ) -> list[SnapshotRecord]:
        """See `SnapshotStore.read_snapshots_by_slices`."""
        return await self._pool.run(
            functools.partial(
                _snapshots.snapshots_by_slices,
                entity_type=entity_type,
                slices=slices,
                after=after,
                limit=limit,
            ),
            idempotent=True,
        )


def open_postgres_journal(
    dsn: str,
    *,
    schema: str = "fluvial",
    pool_size: int = 8,
    poll_interval: float = 0.5,
    connect_timeout: float = 10.0,
    retry_for: float = 10.0,
    writers: int | None = None,
    max_appends_per_transaction: int = MAX_APPENDS_PER_TRANSACTION,
) -> AbstractAsyncContextManager[PostgresJournal]:
    """Open the PostgreSQL journal (and snapshot store) in `schema` of the database at `dsn`
    (a libpq connection string or URI, such as ``postgresql://user@host:5432/db``).

    Opening creates the schema and its tables, or migrates them, and raises
    PostgresSchemaTooNew for a schema of a newer fluvial (changing nothing) and
    PostgresUnavailable when the server cannot be reached within `connect_timeout` seconds.
    At most `pool_size` connections run calls at a time; `poll_interval` is how often
    `wait_for_new_events` looks for other processes' commits. A call that loses the server
    retries with backoff for up to `retry_for` seconds, then raises PostgresUnavailable
    (docs/postgres.md, "Faults"). Appends are committed in groups: up to `writers`
    transactions at once (each on a connection of the pool, so at most `pool_size`; default
    4, or `pool_size` if smaller), each holding up to `max_appends_per_transaction` appends
    (docs/postgres.md, "Group commit").
    Arguments that cannot work raise UsageError here.
    """
    check_schema_name(schema)
    if pool_size < 1:
        raise UsageError(f"pool_size must be at least 1, not {pool_size}")
    if poll_interval <= 0 or connect_timeout <= 0:
        raise UsageError("poll_interval and connect_timeout must be positive seconds")
    if not retry_for >= 0 or retry_for == float("inf"):
        raise UsageError(f"retry_for must be seconds, 0 or more and finite, not {retry_for}")
    if writers is None:
        writers = min(WRITERS, pool_size)
    _check_group_commit(writers, max_appends_per_transaction, pool_size)
    pool = ConnectionPool(
        dsn, schema, pool_size, connect_timeout=connect_timeout, retry_for=retry_for
    )
    return _open(
        pool,
        functools.partial(
            PostgresJournal,
            poll_interval=poll_interval,
            schema=schema,
            writers=writers,
            max_appends_per_transaction=max_appends_per_transaction,
        ),
        schema,
    )


def _check_group_commit(writers: int, max_appends_per_transaction: int, pool_size: int) -> None:
    if writers < 1:
        raise UsageError(f"writers must be at least 1, not {writers}")
    if writers > pool_size:
        # Each writer's transaction holds a connection of the pool while it runs: more
        # writers than connections would only queue for them, and leave none for reads.
        raise UsageError(
            f"writers ({writers}) may not exceed pool_size ({pool_size}): each writer's "
            "transaction takes a connection of the pool; raise pool_size or lower writers"
        )
    if max_appends_per_transaction < 1:
        raise UsageError(
            f"max_appends_per_transaction must be at least 1, not {max_appends_per_transaction}"
        )


@contextlib.asynccontextmanager
async def _open(
    pool: ConnectionPool, make_journal: Callable[[ConnectionPool], PostgresJournal], schema: str
) -> AsyncIterator[PostgresJournal]:
    try:
        await pool.run(functools.partial(migrate, schema=schema), retry=False)
        journal = make_journal(pool)
        async with open_service_nursery() as nursery:
            await nursery.start(journal._group_commit.serve)
            try:
                yield journal
            finally:
                # The appends taken or waiting commit, and their callers are answered.
                journal._group_commit.close()
    finally:
        await pool.aclose()
