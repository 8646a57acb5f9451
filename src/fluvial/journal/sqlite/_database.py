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
import itertools
import logging
import queue
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from fluvial._wakeup import Signal
from fluvial.journal.api import JournalClosed, JournalError
from fluvial.journal.sqlite._checkpoints import WalCheckpoints
from fluvial.journal.sqlite._errors import JournalFileError, storage_error
from fluvial.journal.sqlite._file import (
    DEFAULT_BUSY_TIMEOUT,
    FileOptions,
    checked_path,
    open_writer,
)
from fluvial.journal.sqlite._file import Durability as Durability
from fluvial.journal.sqlite._file import connect as connect
from fluvial.journal.sqlite._transaction import (
    PendingWrite,
    WriterState,
    WriteTransaction,
    commit_batch,
    pages_written,
    transactions_of,
)
from fluvial.nursery_errors import open_service_nursery

log = logging.getLogger("fluvial.journal")

T = TypeVar("T")

_MAX_WRITES_PER_TRANSACTION = 2000


class _EndOfTurn(trio.abc.Instrument):
    """Calls `hook` each time trio has run every runnable task and is about to look for I/O."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self._hook = hook

    def before_io_wait(self, timeout: float) -> None:
        """Trio calls this at the end of each turn of its scheduler."""
        self._hook()


class SqliteDatabase:
    """The shared engine of the SQLite journal, snapshot store and offset store.

    Create it with `open_sqlite_database`; it owns the writer thread and closes every
    connection when that context exits.
    """

    def __init__(self, path: str, writer: sqlite3.Connection, options: FileOptions) -> None:
        self.path = path
        self._writer = writer
        self._options = options
        self._reader_pool: list[sqlite3.Connection] = []
        self._reader_limiter = trio.CapacityLimiter(options.readers)
        self.poll_interval = options.poll_interval
        self._closed = False
        # Writes wait in the outbox until the end of the scheduler's turn (`_hand_over_writes`).
        self._outbox: list[PendingWrite[Any]] = []
        self._queue: queue.SimpleQueue[list[PendingWrite[Any]] | None] = queue.SimpleQueue()
        self._committed_batches: queue.SimpleQueue[list[PendingWrite[Any]]] = queue.SimpleQueue()
        self._wake_receive, self._wake_send = socket.socketpair()
        self._wake_receive.setblocking(False)
        self._thread = threading.Thread(
            target=self._writer_thread, name=f"fluvial-writer:{path}", daemon=True
        )
        self._commits = Signal()
        self._state = WriterState(path)
        self._checkpoints = WalCheckpoints(path, writer, self._connect_reader)
        self._in_flight: list[PendingWrite[Any]] | None = None  # taken, not yet committed
        self._writer_failure: BaseException | None = None  # why the writer thread died
        self._writer_stopped = False
        self._trio_token = trio.lowlevel.current_trio_token()
        self._checkpoints.start()
        self._thread.start()

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> JournalError:
        if self._writer_failure is None:
            return JournalClosed(self.path)
        error = JournalFileError(
            self.path,
            f"the writer thread failed ({self._writer_failure!r}); this write may not have "
            "been stored, and the journal takes no more calls: close it and open it again",
        )
        error.__cause__ = self._writer_failure
        return error

    async def write(self, function: Callable[[WriteTransaction], T], *, alone: bool = False) -> T:
        """Run `function` in the writer thread inside a transaction, committed with others
        (`alone`: in a transaction of its own, after the others; for the user's code).

        If `function` raises, its own changes are rolled back and the error is raised here
        (SQLite's errors as a `JournalFileError`); the other writes of the transaction are not
        affected. Cancelled while it waits in the outbox (until the end of the scheduler's
        turn), the write did nothing; once handed to the writer thread it cannot be
        cancelled: the caller waits for its commit (writes are short). Raises JournalClosed
        after the database was closed, and a `JournalFileError` once the writer thread failed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        pending = PendingWrite(function, trio.lowlevel.current_task(), alone=alone)
        self._outbox.append(pending)

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            # Still in the outbox: the writer has not seen it, so it can be taken back.
            if any(waiting is pending for waiting in self._outbox):
                self._outbox.remove(pending)
                return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def write_soon(
        self,
        function: Callable[[WriteTransaction], T],
        on_done: Callable[[outcome.Outcome[T]], None],
    ) -> None:
        """Like `write`, but without waiting: `on_done` gets the outcome once committed,
        called by the task that wakes writers (so it must not raise). Raises JournalClosed
        (and `on_done` is not called) after the database was closed."""
        if self._closed:  # not `_check_open()`: a call less for every command of an entity
            raise self._closed_error()
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
        """A counter of this database's commits, for `wait_for_commit`."""
        return self._commits.count

    async def wait_for_commit(self, seen_commit_count: int) -> None:
        """Return once a commit has happened after `seen_commit_count`, or after the polling
        interval (other processes may write the same file)."""
        await self._commits.wait(seen_commit_count, at_most=self.poll_interval)

    def _writer_thread(self) -> None:
        try:
            self._serve_writes()
        except BaseException as exc:  # a bug: no caller may wait for this thread forever
            log.critical("%s: the writer thread failed", self.path, exc_info=True)
            self._writer_failure = exc
            with contextlib.suppress(trio.RunFinishedError):
                self._trio_token.run_sync_soon(self._fail_stranded_writes)

    def _serve_writes(self) -> None:
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
            transactions = transactions_of(batch)
            for index, transaction in enumerate(transactions):
                # Held and not committed yet, to fail if the thread dies: the rest of the batch.
                self._in_flight = (
                    transaction
                    if index == len(transactions) - 1
                    else list(itertools.chain.from_iterable(transactions[index:]))
                )
                commit_batch(self._writer, self._state, transaction)  # never raises
                self._committed_batches.put(transaction)
                self._in_flight = None
                self._wake_send.send(b"\0")
                self._checkpoints.written(pages_written(transaction))
            if self._queue.empty():
                # After the callers were woken, so that what the writer checkpoints itself
                # overlaps with the trio thread deciding the next commands (_checkpoints.py).
                self._checkpoints.idle()

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
        batches = 0
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
            batches += 1
        self._commits.notify(batches)  # wakes the waiters even for none, as it always did

    def _fail_stranded_writes(self) -> None:
        """Once the writer thread has died, close the database and fail every write it will
        never commit (the one it held, the queued ones, the outbox) with a `JournalFileError`.
        Runs in the trio thread, as often as it is called."""
        if self._writer_failure is None:
            return
        self._closed = True
        self._dispatch_committed()  # the batches it committed before it died
        stranded = [self._in_flight or [], self._outbox]
        self._in_flight, self._outbox = None, []
        with contextlib.suppress(queue.Empty):
            while True:
                stranded.append(self._queue.get_nowait() or [])
        if writes := list(itertools.chain.from_iterable(stranded)):
            for pending in writes:
                pending.result = outcome.Error(self._closed_error())
            self._committed_batches.put(writes)
            self._dispatch_committed()

    async def _stop_writer(self) -> None:
        """Refuse new calls, commit what was written so far, and end the writer thread, then
        the checkpointer's (after the pass it may be in). Once: a second call does nothing."""
        if self._writer_stopped:
            return
        self._writer_stopped = True
        self._closed = True
        self._hand_over_writes()
        self._queue.put(None)

        def stop() -> None:
            self._thread.join()
            self._checkpoints.stop()

        await trio.to_thread.run_sync(stop)

    async def read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run `function` with a reader connection in a worker thread.

        SQLite's errors come out as a `JournalFileError` naming the file; raises JournalClosed
        after the database was closed (a `JournalFileError` once the writer thread failed).
        """
        self._check_open()
        async with self._reader_limiter:
            self._check_open()  # it may have closed while this read waited for a reader
            conn = self._reader_pool.pop() if self._reader_pool else None
            try:
                if conn is None:
                    conn = await trio.to_thread.run_sync(self._connect_reader)
                return await trio.to_thread.run_sync(function, conn)
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from exc
            finally:
                if conn is not None:
                    if self._closed:
                        conn.close()
                    else:
                        self._reader_pool.append(conn)

    def _connect_reader(self) -> sqlite3.Connection:
        return connect(self.path, self._options.durability, busy_timeout=self._options.busy_timeout)

    def _close_connections(self) -> None:
        self._closed = True
        self._wake_send.close()
        self._wake_receive.close()
        for conn in self._reader_pool:
            conn.close()
        self._reader_pool.clear()
        self._writer.close()


def open_sqlite_database(
    path: str | Path,
    *,
    durability: Durability = "process",
    readers: int = 4,
    poll_interval: float = 0.5,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> AbstractAsyncContextManager[SqliteDatabase]:
    """Open (creating or migrating) a SQLite database file for fluvial.

    `durability="process"` (the default) keeps every committed write across a killed process;
    `"power-loss"` also keeps it across an OS crash, at the cost of an fsync per transaction.
    `readers` bounds the reader connections; `poll_interval` (seconds) bounds how late a
    follower notices writes made by another process; `busy_timeout` (seconds) is how long a
    write waits for a lock another connection holds before it fails with JournalBusy.

    Raises UsageError here for arguments that cannot work, before the file is touched; on
    entering, SchemaVersionTooNew for a file of a newer fluvial, and a `JournalFileError`
    (NotAJournal, JournalCorrupt, JournalCannotOpen, ...) for a file it cannot use, which is
    then left as it was.
    """
    name = checked_path(path)
    options = FileOptions.checked(
        durability=durability,
        readers=readers,
        poll_interval=poll_interval,
        busy_timeout=busy_timeout,
    )
    return _open_sqlite_database(name, options)


@contextlib.asynccontextmanager
@trio.lowlevel.enable_ki_protection  # Ctrl-C reaches the body, not the closing
async def _open_sqlite_database(path: str, options: FileOptions) -> AsyncIterator[SqliteDatabase]:
    writer = await trio.to_thread.run_sync(open_writer, path, options)
    database = SqliteDatabase(path, writer, options)
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
                database._fail_stranded_writes()
                nursery.cancel_scope.cancel()
    finally:
        # Also if the opening was cancelled before the body: the threads run already.
        with trio.CancelScope(shield=True):
            await database._stop_writer()
        database._close_connections()
