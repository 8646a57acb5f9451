"""One SQLite file: a single writer with group commit, and pooled readers, off the trio loop.

sqlite3 blocks, so every call runs in a worker thread. All writes go through one long-lived
connection owned by one writer task: it takes every write waiting in its queue, runs them in one
transaction (each in its own savepoint, so one failing write undoes only itself) and wakes their
callers once the transaction is committed. Because there is one writer, it can hand out strictly
increasing timestamps, and a reader never sees an event appear behind one it has already read.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import attrs
import trio

from fluvial.journal.sqlite_schema import migrate

T = TypeVar("T")
Durability = Literal["process", "power-loss"]

_MAX_WRITES_PER_TRANSACTION = 2000


class WriteTransaction:
    """What a write function receives: the writer's connection, inside an open transaction."""

    def __init__(self, connection: sqlite3.Connection, last_timestamp: int) -> None:
        self.connection = connection
        self._last_timestamp = last_timestamp

    def next_timestamp(self) -> int:
        """A timestamp in microseconds, greater than every one handed out before."""
        now = time.time_ns() // 1000
        self._last_timestamp = max(now, self._last_timestamp + 1)
        return self._last_timestamp

    @property
    def last_timestamp(self) -> int:
        return self._last_timestamp


@attrs.define(eq=False)
class _PendingWrite(Generic[T]):
    function: Callable[[WriteTransaction], T]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


def _connect(path: str, durability: Durability) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL survives a killed process; FULL also survives power loss, at an fsync a commit.
    conn.execute("PRAGMA synchronous=" + ("FULL" if durability == "power-loss" else "NORMAL"))
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class SqliteDatabase:
    """The shared engine of the SQLite journal, snapshot store and offset store.

    Create it with `open_sqlite_database`; it owns the writer task and closes every connection
    when that context exits.
    """

    def __init__(
        self,
        path: str,
        writer: sqlite3.Connection,
        *,
        durability: Durability,
        readers: int,
        poll_interval: float,
    ) -> None:
        self.path = path
        self._writer = writer
        self._durability: Durability = durability
        self._reader_pool: list[sqlite3.Connection] = []
        self._reader_limiter = trio.CapacityLimiter(readers)
        self._poll_interval = poll_interval
        send, receive = trio.open_memory_channel[_PendingWrite[Any]](math.inf)
        self._write_queue = send
        self._write_receive = receive
        self._commit_count = 0
        self._committed = trio.Event()

    # -- writing ----------------------------------------------------------------------------
    async def write(self, function: Callable[[WriteTransaction], T]) -> T:
        """Run `function` in the writer thread inside a transaction, committed with others.

        If `function` raises, its own changes are rolled back and the error is raised here;
        the other writes of the transaction are not affected.
        """
        pending = _PendingWrite(function)
        self._write_queue.send_nowait(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def commit_count(self) -> int:
        return self._commit_count

    async def wait_for_commit(self, seen_commit_count: int) -> None:
        """Return once a commit has happened after `seen_commit_count`, or after the polling
        interval (other processes may write the same file)."""
        if self._commit_count != seen_commit_count:
            return
        with trio.move_on_after(self._poll_interval):
            await self._committed.wait()

    async def _run_writer(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        async for first in self._write_receive:
            batch = [first]
            while len(batch) < _MAX_WRITES_PER_TRANSACTION:
                try:
                    batch.append(self._write_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            # The transaction finishes even if we are being cancelled: callers wait for it.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._commit_batch, batch)
            for pending in batch:
                pending.done.set()
            self._commit_count += 1
            self._committed.set()
            self._committed = trio.Event()

    def _commit_batch(self, batch: list[_PendingWrite[Any]]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            (last,) = conn.execute("SELECT last_timestamp FROM journal_clock").fetchone()
            txn = WriteTransaction(conn, last)
            for pending in batch:
                conn.execute("SAVEPOINT write")
                try:
                    pending.result = pending.function(txn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO write")
                    pending.error = exc
                conn.execute("RELEASE write")
            if txn.last_timestamp != last:
                conn.execute("UPDATE journal_clock SET last_timestamp = ?", (txn.last_timestamp,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.result, pending.error = None, exc

    # -- reading ----------------------------------------------------------------------------
    async def read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run `function` with a reader connection in a worker thread."""
        async with self._reader_limiter:
            conn = self._reader_pool.pop() if self._reader_pool else None
            if conn is None:
                conn = await trio.to_thread.run_sync(_connect, self.path, self._durability)
            try:
                return await trio.to_thread.run_sync(function, conn)
            finally:
                self._reader_pool.append(conn)

    def _close(self) -> None:
        for conn in self._reader_pool:
            conn.close()
        self._reader_pool.clear()
        self._writer.close()


@contextlib.asynccontextmanager
async def open_sqlite_database(
    path: str | Path,
    *,
    durability: Durability = "process",
    readers: int = 4,
    poll_interval: float = 0.5,
) -> AsyncIterator[SqliteDatabase]:
    """Open (creating or migrating) a SQLite database file for fluvial.

    `durability="process"` (the default) keeps every committed write across a killed process;
    `"power-loss"` also keeps it across an OS crash, at the cost of an fsync per transaction.
    `poll_interval` bounds how late a follower notices writes made by another process.
    Raises SchemaVersionTooNew for a file written by a newer fluvial.
    """
    path = str(path)

    def connect_and_migrate() -> sqlite3.Connection:
        conn = _connect(path, durability)
        try:
            migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return conn

    writer = await trio.to_thread.run_sync(connect_and_migrate)
    database = SqliteDatabase(
        path, writer, durability=durability, readers=readers, poll_interval=poll_interval
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(database._run_writer)
            try:
                yield database
            finally:
                database._write_queue.close()
    finally:
        database._close()
