"""One SQLite file: a single writer with group commit, and pooled readers, off the trio loop.

sqlite3 blocks, so no SQLite call runs on the trio thread. All writes go through one long-lived
connection owned by a dedicated writer thread: it takes every write waiting in its queue, runs
them in one transaction (each in its own savepoint, so one failing write undoes only itself) and
wakes all their callers with one call into trio once the transaction is committed. A dedicated
thread, rather than `trio.to_thread` per transaction, and a socket pair back to a trio task
that wakes the callers, rather than `run_sync_soon`: a round trip measured ~50 us that way,
against ~100 us and ~150 us (benchmarks/bench_entities.py shows what it buys).

Because there is one writer per file at a time (SQLite serializes write transactions, across
processes too), the writer hands out strictly increasing timestamps that continue from the
newest event in the file (`FileClock`), so a reader never sees an event appear behind one it
has already read.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import outcome
import trio

from fluvial.journal.sqlite_schema import SCHEMA_VERSION, SchemaVersionTooNew, migrate
from fluvial.journal.sqlite_transaction import (
    FileClock,
    KnownKeys,
    PendingWrite,
    WriteTransaction,
    commit_batch,
    pages_written,
)
from fluvial.nursery_errors import open_service_nursery

log = logging.getLogger("fluvial.journal")

T = TypeVar("T")
Durability = Literal["process", "power-loss"]

_MAX_WRITES_PER_TRANSACTION = 2000
# The writer checkpoints the WAL itself once about this many pages were written since the last
# checkpoint, when it has nothing else to do (see `_checkpoint_when_idle`); SQLite's own
# automatic checkpoint stays as a backstop at four times that, for a writer that never idles.
_CHECKPOINT_PAGES = 4000


def connect(path: str, durability: Durability, *, writer: bool = False) -> sqlite3.Connection:
    """A connection set up the way every fluvial connection to a journal file is."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL survives a killed process; FULL also survives power loss, at an fsync a commit.
    conn.execute("PRAGMA synchronous=" + ("FULL" if durability == "power-loss" else "NORMAL"))
    conn.execute("PRAGMA busy_timeout=10000")
    if writer:
        # The writer checkpoints when idle (`SqliteDatabase._checkpoint_when_idle`); SQLite's
        # automatic checkpoint inside a commit is only the backstop.
        conn.execute(f"PRAGMA wal_autocheckpoint={4 * _CHECKPOINT_PAGES}")
        # 32 MiB of page cache instead of 2: a commit of 1,000 entities' events updates
        # hundreds of pages of the per-entity index, which then stay in memory.
        conn.execute("PRAGMA cache_size=-32768")
    return conn


def _refuse_newer_schema(path: str) -> None:
    """Raise SchemaVersionTooNew before `connect` switches the file to WAL, so that a file of a
    newer fluvial is not modified at all. (`migrate` checks again, inside its transaction.)"""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found > SCHEMA_VERSION:
        raise SchemaVersionTooNew(path, found, SCHEMA_VERSION)


def _cannot_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class _EndOfTurn(trio.abc.Instrument):
    """Calls `hook` each time trio has run every runnable task and is about to look for I/O."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self._hook = hook

    def before_io_wait(self, timeout: float) -> None:
        self._hook()


class SqliteDatabase:
    """The shared engine of the SQLite journal, snapshot store and offset store.

    Create it with `open_sqlite_database`; it owns the writer thread and closes every
    connection when that context exits.
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
        self.poll_interval = poll_interval
        # Writes wait in the outbox until the end of the scheduler's turn (`_hand_over_writes`).
        self._outbox: list[PendingWrite[Any]] = []
        self._queue: queue.SimpleQueue[list[PendingWrite[Any]] | None] = queue.SimpleQueue()
        self._committed_batches: queue.SimpleQueue[list[PendingWrite[Any]]] = queue.SimpleQueue()
        self._wake_receive, self._wake_send = socket.socketpair()
        self._wake_receive.setblocking(False)
        self._thread = threading.Thread(
            target=self._writer_thread, name=f"fluvial-writer:{path}", daemon=True
        )
        self._commit_count = 0
        self._clock = FileClock()
        self._keys = KnownKeys()
        self._pages_since_checkpoint = 0
        self._committed: trio.Event | None = None  # exists only while someone waits
        self._thread.start()

    # -- writing ----------------------------------------------------------------------------
    async def write(self, function: Callable[[WriteTransaction], T]) -> T:
        """Run `function` in the writer thread inside a transaction, committed with others.

        If `function` raises, its own changes are rolled back and the error is raised here;
        the other writes of the transaction are not affected. Once queued, a write cannot be
        cancelled: the caller waits for its commit (writes are short).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._outbox.append(PendingWrite(function, trio.lowlevel.current_task()))
        result: T = await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        return result

    def write_soon(
        self,
        function: Callable[[WriteTransaction], T],
        on_done: Callable[[outcome.Outcome[T]], None],
    ) -> None:
        """Like `write`, but without waiting: `on_done` gets the outcome once committed,
        called by the task that wakes writers (so it must not raise)."""
        self._outbox.append(PendingWrite(function, None, on_done))

    def _hand_over_writes(self) -> None:
        """Hand the outbox to the writer thread: called by trio at the end of each turn of its
        scheduler (`_EndOfTurn`), so the writes of all the tasks of a turn cross at once.

        Handing over each write as it came woke the writer thread at the first one, and it
        then fought the trio thread for the GIL while the others were still being decided (the
        entity benchmark measured ~30% more commands/s this way). A flusher task woken by the
        first write did the same at the cost of a task switch per turn, which a single entity
        pays on every command.
        """
        if self._outbox:
            outbox, self._outbox = self._outbox, []
            self._queue.put(outbox)

    def commit_count(self) -> int:
        return self._commit_count

    async def wait_for_commit(self, seen_commit_count: int) -> None:
        """Return once a commit has happened after `seen_commit_count`, or after the polling
        interval (other processes may write the same file)."""
        if self._commit_count != seen_commit_count:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(self.poll_interval):
            if self._committed is None:
                self._committed = trio.Event()
            await self._committed.wait()

    def _writer_thread(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = first
            while len(batch) < _MAX_WRITES_PER_TRANSACTION:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch += more
            commit_batch(self._writer, self._clock, self._keys, batch)
            self._committed_batches.put(batch)
            self._wake_send.send(b"\0")
            self._pages_since_checkpoint += pages_written(batch)
            self._checkpoint_when_idle()

    def _checkpoint_when_idle(self) -> None:
        """Copy the WAL back into the database file, once it has grown, if no write waits.

        A checkpoint syncs the WAL and the database file (two fsyncs, ~30-50 ms here). Run by
        SQLite inside the commit that crossed its threshold, it delayed that commit's callers;
        run here, after they were woken, it overlaps with the trio thread deciding the next
        commands. In the entity benchmark with 1,000 entities the writer's time per commit
        fell from ~32 to ~14 ms (benchmark rounds 2 and 3).
        """
        if self._pages_since_checkpoint < _CHECKPOINT_PAGES or not self._queue.empty():
            return
        self._pages_since_checkpoint = 0
        try:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            log.warning("%s: checkpointing the WAL failed", self.path, exc_info=True)

    @trio.lowlevel.enable_ki_protection  # a Ctrl-C here would strand the batch's callers
    async def _wake_writers(self, task_status: trio.TaskStatus[None]) -> None:
        """Wake the callers of every committed batch, as the writer thread signals them."""
        task_status.started()
        while True:
            await trio.lowlevel.wait_readable(self._wake_receive)
            try:
                self._wake_receive.recv(4096)
            except BlockingIOError:
                continue
            self._dispatch_committed()

    def _dispatch_committed(self) -> None:
        while True:
            try:
                batch = self._committed_batches.get_nowait()
            except queue.Empty:
                break
            for pending in batch:
                assert pending.result is not None
                if pending.task is not None:
                    trio.lowlevel.reschedule(pending.task, pending.result)
                    continue
                assert pending.on_done is not None
                try:
                    pending.on_done(pending.result)
                except Exception:
                    # A broken callback must not strand the other writers of the batch.
                    log.exception("%s: a write's callback failed", self.path)
            self._commit_count += 1
        if self._committed is not None:
            self._committed.set()
            self._committed = None

    async def _stop_writer(self) -> None:
        self._hand_over_writes()
        self._queue.put(None)
        await trio.to_thread.run_sync(self._thread.join)

    # -- reading ----------------------------------------------------------------------------
    async def read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run `function` with a reader connection in a worker thread."""
        async with self._reader_limiter:
            conn = self._reader_pool.pop() if self._reader_pool else None
            if conn is None:
                conn = await trio.to_thread.run_sync(connect, self.path, self._durability)
            try:
                return await trio.to_thread.run_sync(function, conn)
            finally:
                self._reader_pool.append(conn)

    def _close_connections(self) -> None:
        self._wake_send.close()
        self._wake_receive.close()
        for conn in self._reader_pool:
            conn.close()
        self._reader_pool.clear()
        self._writer.close()


@contextlib.asynccontextmanager
@trio.lowlevel.enable_ki_protection  # Ctrl-C reaches the body, not the closing
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
        _refuse_newer_schema(path)
        conn = connect(path, durability, writer=True)
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
        async with open_service_nursery() as nursery:
            await nursery.start(database._wake_writers)
            end_of_turn = _EndOfTurn(database._hand_over_writes)
            trio.lowlevel.add_instrument(end_of_turn)
            try:
                yield database
            finally:
                trio.lowlevel.remove_instrument(end_of_turn)
                with trio.CancelScope(shield=True):
                    await database._stop_writer()
                database._dispatch_committed()  # the callers of the last batches
                nursery.cancel_scope.cancel()
    finally:
        database._close_connections()
