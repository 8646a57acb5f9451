"""What runs inside the writer's transactions: the writes, and how a batch of writes commits
as one transaction (what the writer remembers in between is in _writer_memory.py).

`SqliteDatabase` (_database.py) owns the writer thread and hands it batches; everything
here runs in that thread, on its connection. Nothing here may let an exception escape the
writer thread: every write of a batch gets an outcome, whatever fails.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import msgspec
import outcome
import trio

from fluvial.core.errors import FluvialError
from fluvial.journal.sqlite._errors import JournalFileError, storage_error
from fluvial.journal.sqlite._writer_memory import (
    EnsuredKeys,
    FileClock,
    HighestSeqNrs,
    KnownKeys,
    SeqNrCheck,
)

T = TypeVar("T")


class WriteTransaction:
    """What a write function receives: the writer's connection, inside an open transaction."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        last_timestamp: int,
        keys: KnownKeys,
        seq_nrs: HighestSeqNrs,
    ) -> None:
        self.connection = connection
        self._last_timestamp = last_timestamp
        self._keys = keys
        self._seq_nrs = seq_nrs

    def ensure_keys(self, ensured: EnsuredKeys, keys: Iterable[str]) -> None:
        """Run `ensured` for each of `keys` not known to be committed already."""
        self._keys.ensure(self.connection, ensured, keys)

    def check_follows(self, check: SeqNrCheck, runs: Iterable[list[tuple[Any, ...]]]) -> None:
        """Raise `check.on_gap` unless each of `runs` (one key's rows, in seq nr order) starts
        right after the key's highest seq nr, stored or written before in this transaction.
        A first seq nr at or below it passes: the unique index refuses it as a conflict."""
        self._seq_nrs.check_follows(self.connection, check, runs)

    def highest_seq_nr(self, check: SeqNrCheck, key: str) -> int:
        """The highest seq nr of `key`, stored or written in this transaction, as the
        writer remembers it (a query only for a key it has not seen)."""
        return self._seq_nrs.highest(self.connection, check.highest_sql, key)

    def appended(self, key: str, highest: int) -> None:
        """Note that this transaction wrote `key`'s seq nrs up to `highest`, so that later
        checks (`check_follows`, `highest_seq_nr`) see them; forgotten if it rolls back."""
        self._seq_nrs.appended(key, highest)

    def next_timestamp(self) -> int:
        """A timestamp in microseconds, greater than every one handed out before."""
        return self.next_timestamps(1)

    def next_timestamps(self, count: int) -> int:
        """The first of `count` consecutive timestamps, all greater than every one before."""
        first = max(time.time_ns() // 1000, self._last_timestamp + 1)
        self._last_timestamp = first + count - 1
        return first

    @property
    def last_timestamp(self) -> int:
        """The last timestamp handed out in this transaction (or before it)."""
        return self._last_timestamp


class RowInsert(msgspec.Struct, eq=False):
    """A write that only inserts rows with one statement; returns the first row's timestamp.

    The statement's last parameter is a timestamp column: row `i` gets the first timestamp plus
    `i`. The writer merges the row inserts of one transaction into one `executemany` (one call
    into SQLite instead of one per write: it halved the writer's time in the entity benchmark);
    if that fails, each runs alone, and a failing one raises `on_conflict(rows)` to its caller
    only. Rows are tuples, and each stamped row lives only while SQLite binds it, so a
    transaction of thousands of rows gives the garbage collector nothing to walk. With
    `ensure`, the rows' first values are keys that `ensure` makes exist first; with `follows`,
    the rows are one key's seq nrs, checked to follow its stored ones (`SeqNrCheck`).
    (A msgspec Struct, as `PendingWrite`: one is built per append, and a Struct is built in C,
    an attrs class in a Python `__init__`.)
    """

    sql: str
    rows: list[tuple[Any, ...]]
    on_conflict: Callable[[list[tuple[Any, ...]]], Exception]
    ensure: EnsuredKeys | None = None
    follows: SeqNrCheck | None = None

    def __call__(self, txn: WriteTransaction) -> int:
        try:
            return _insert_all(txn, [self])
        except sqlite3.IntegrityError as exc:
            raise self.on_conflict(self.rows) from exc


def _insert_all(txn: WriteTransaction, inserts: list[RowInsert]) -> int:
    """Insert the rows of `inserts` (all with the first one's statement) with one
    `executemany`, stamped with consecutive timestamps; return the first timestamp."""
    head = inserts[0]
    runs = [insert.rows for insert in inserts]
    if head.follows is not None:
        txn.check_follows(head.follows, runs)
    rows = list(itertools.chain.from_iterable(runs))
    first = txn.next_timestamps(len(rows))
    if head.ensure is not None:
        txn.ensure_keys(head.ensure, [row[0] for row in rows])
    txn.connection.executemany(head.sql, _stamped(rows, first))
    return first


class PendingWrite(msgspec.Struct, Generic[T], eq=False):
    """A write waiting for its commit, and who to tell: a parked task or a callback.

    `alone`: the write commits in a transaction of its own, after the other writes handed
    over with it have committed and their callers were woken (see `transactions_of`).
    `result` is the write's outcome, once it has one. (A msgspec Struct: one is built per
    write, in C; a class's `__init__` is a Python call.)
    """

    function: Callable[[WriteTransaction], T]
    task: trio.lowlevel.Task | None
    on_done: Callable[[outcome.Outcome[T]], None] | None = None
    alone: bool = False
    result: outcome.Outcome[T] | None = None


def transactions_of(batch: list[PendingWrite[Any]]) -> list[list[PendingWrite[Any]]]:
    """The transactions that commit `batch`: its shared writes together (group commit), then
    each `alone` write by itself.

    A write runs alone when it runs the user's code (an exactly-once handler, a read-model
    migration): a slow handler would otherwise hold up every append of its group commit, and
    a failing one make it run again with savepoints. Measured with 200 entities beside an
    exactly-once projection whose handler takes 2 ms: riding the group commit, ask p50
    11.5-21 ms; alone, 10-18 ms and more commands per second; with a fast handler no
    difference (docs/benchmarks.md).
    """
    if not any(pending.alone for pending in batch):
        return [batch]
    shared = [pending for pending in batch if not pending.alone]
    alone = [[pending] for pending in batch if pending.alone]
    return [shared, *alone] if shared else alone


class WriterState:
    """What the writer of the file at `path` remembers between its transactions."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.clock = FileClock()
        self.keys = KnownKeys()
        self.seq_nrs = HighestSeqNrs()

    def begin(self, conn: sqlite3.Connection) -> WriteTransaction:
        """Begin a write transaction, reading again what another connection may have changed."""
        conn.execute("BEGIN IMMEDIATE")
        if self.clock.refresh(conn):
            # Another process may have appended to any entity.
            self.seq_nrs.forget()
        return WriteTransaction(conn, self.clock.last_timestamp, self.keys, self.seq_nrs)

    def mark(self) -> tuple[int, int]:
        """A point to roll back to, before the next write."""
        return self.keys.mark(), self.seq_nrs.mark()

    def rolled_back_to(self, mark: tuple[int, int]) -> None:
        """Forget what was noted since `mark` (its savepoint or transaction was rolled back)."""
        self.keys.rolled_back_to(mark[0])
        self.seq_nrs.rolled_back_to(mark[1])

    def committed(self, txn: WriteTransaction) -> None:
        """Keep what `txn` noted: it was committed."""
        self.keys.committed()
        self.seq_nrs.committed()
        self.clock.last_timestamp = txn.last_timestamp


_NOTHING_DONE = (0, 0)  # the mark of a transaction's start


def commit_batch(
    conn: sqlite3.Connection, state: WriterState, batch: list[PendingWrite[Any]]
) -> None:
    """Run `batch` in one transaction; each write's outcome lands in its `result`.

    Writes rarely fail, so the batch first runs without savepoints; only if one fails is the
    transaction rolled back and the batch run again with a savepoint around each write. A
    function write runs once per call all the same (see `_try_commit`). If
    the transaction itself fails (the lock, a full disk, a bug here), every write of the batch
    gets a `JournalFileError` and nothing of the batch is stored. Never raises.
    """
    try:
        if not _try_commit(conn, state, batch, savepoints=False):
            # The rollback undid the row inserts that succeeded too: they run again. No
            # function write has run, but the one that failed (it keeps its error).
            for pending in batch:
                if isinstance(pending.function, RowInsert):
                    pending.result = None
            _try_commit(conn, state, batch, savepoints=True)
    except BaseException as exc:  # the writer thread must go on, whatever failed
        state.rolled_back_to(_NOTHING_DONE)
        _rollback(conn)
        for pending in batch:
            pending.result = outcome.Error(_batch_failure(state.path, exc))


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled back already (it does on some errors, such as a full disk).
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _batch_failure(path: str, error: BaseException) -> BaseException:
    """One write's error for the failure of its whole transaction (a new one per write:
    several tasks raising one exception object would tangle its traceback)."""
    failure = (
        storage_error(path, error)
        if isinstance(error, sqlite3.Error)
        else JournalFileError(
            path, f"the transaction failed ({error!r}); nothing of this write was stored"
        )
    )
    failure.__cause__ = error
    return failure


def _write_failure(path: str, function: object, error: BaseException) -> BaseException:
    """What the caller of a failed write gets: a typed error for SQLite's errors and for
    rows fluvial could not store, the write function's own error otherwise."""
    if isinstance(error, sqlite3.Error):
        failure: BaseException = storage_error(path, error)
    elif isinstance(function, RowInsert) and not isinstance(error, FluvialError):
        failure = JournalFileError(
            path, f"storing the rows failed ({error!r}); nothing of this write was stored"
        )
    else:
        return error
    failure.__cause__ = error
    return failure


def _run_merged(txn: WriteTransaction, batch: list[PendingWrite[Any]]) -> bool:
    """Run each run of consecutive `RowInsert`s with one statement as one executemany.
    False if one failed, however (the caller rolls back and runs the writes one by one, so
    that only the failing one fails)."""
    index = 0
    while index < len(batch):
        run = _row_insert_run(batch, index)
        if len(run) > 1:
            try:
                first = _insert_all(txn, run)
            except Exception:
                return False
            # Each write's first timestamp (accumulate also yields the one after the last).
            firsts = itertools.accumulate((len(insert.rows) for insert in run), initial=first)
            for pending, write_first in zip(batch[index : index + len(run)], firsts, strict=False):
                pending.result = outcome.Value(write_first)
        index += max(1, len(run))
    return True


def _stamped(rows: Iterable[tuple[Any, ...]], first: int) -> Iterator[tuple[Any, ...]]:
    """Each row with its timestamp appended: `first`, `first + 1`, ... (C-level iterators: no
    Python frame per row)."""
    return map(tuple.__add__, rows, zip(itertools.count(first)))


def pages_written(batch: list[PendingWrite[Any]]) -> int:
    """About how many pages a committed batch wrote to the WAL: one per inserted row (at
    worst each lands on another index page), one per other write, and a few per commit."""
    pages = 3
    for pending in batch:
        function = pending.function
        pages += len(function.rows) if isinstance(function, RowInsert) else 1
    return pages


def _row_insert_run(batch: list[PendingWrite[Any]], start: int) -> list[RowInsert]:
    """The `RowInsert`s with the same statement from `start` on."""
    run: list[RowInsert] = []
    same = None  # what the run's inserts share, compared as one tuple (`is` before `==`)
    for index in range(start, len(batch)):
        function = batch[index].function
        if not isinstance(function, RowInsert):
            break
        statement = (function.sql, function.ensure, function.follows)
        if same is None:
            same = statement
        elif statement != same:
            break
        run.append(function)
    return run


def _try_commit(
    conn: sqlite3.Connection,
    state: WriterState,
    batch: list[PendingWrite[Any]],
    *,
    savepoints: bool,
) -> bool:
    """Run `batch` in one transaction: False (rolled back) if a write without a savepoint
    failed. A function may have done anything, so a rollback must never make it run again:
    every write after the first function write gets a savepoint, and a first function write
    that fails keeps its error as its outcome."""
    txn = state.begin(conn)
    if not savepoints and not _run_merged(txn, batch):
        _rollback(conn)
        state.rolled_back_to(_NOTHING_DONE)
        return False
    for pending in batch:
        if pending.result is not None:
            continue  # done by _run_merged, or a function write that failed alone
        if savepoints:
            conn.execute("SAVEPOINT write")
        mark = state.mark()
        result = outcome.capture(pending.function, txn)
        if isinstance(result, outcome.Error):
            if not savepoints:
                _rollback(conn)
                state.rolled_back_to(_NOTHING_DONE)
                if not isinstance(pending.function, RowInsert):
                    pending.result = outcome.Error(
                        _write_failure(state.path, pending.function, result.error)
                    )
                return False
            if not conn.in_transaction:
                # SQLite rolled back the whole transaction (it does so on a full disk, for
                # one): the batch fails with this write's error.
                result.unwrap()
            conn.execute("ROLLBACK TO write")
            state.rolled_back_to(mark)
            result = outcome.Error(_write_failure(state.path, pending.function, result.error))
        pending.result = result
        if savepoints:
            conn.execute("RELEASE write")
        savepoints = savepoints or not isinstance(pending.function, RowInsert)
    conn.execute("COMMIT")
    state.committed(txn)
    return True
