"""What runs inside the writer's transactions: the writes, the file's clock, the entity keys,
and how a batch of writes commits as one transaction.

`SqliteDatabase` (sqlite_database.py) owns the writer thread and hands it batches; everything
here runs in that thread, on its connection.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import attrs
import outcome
import trio

T = TypeVar("T")


class WriteTransaction:
    """What a write function receives: the writer's connection, inside an open transaction."""

    def __init__(
        self, connection: sqlite3.Connection, last_timestamp: int, keys: KnownKeys
    ) -> None:
        self.connection = connection
        self._last_timestamp = last_timestamp
        self._keys = keys

    def ensure_keys(self, ensured: EnsuredKeys, keys: Iterable[str]) -> None:
        """Run `ensured` for each of `keys` not known to be committed already."""
        self._keys.ensure(self.connection, ensured, keys)

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
        return self._last_timestamp


@attrs.frozen
class EnsuredKeys:
    """A statement that makes sure a row exists for a key, such as `INSERT OR IGNORE INTO
    entity (persistence_id) VALUES (?)`, run before a `RowInsert` whose rows lead with that
    key. The writer remembers the keys it has committed, so it runs the statement only for
    keys new to it."""

    sql: str


class KnownKeys:
    """The keys a writer has committed rows for, per `EnsuredKeys` statement; those it added
    in the open transaction count only once it commits."""

    LIMIT = 100_000  # keys remembered per statement; past it, start over (it only costs time)

    def __init__(self) -> None:
        self._known: dict[str, set[str]] = {}
        self._uncommitted: list[tuple[set[str], list[str]]] = []

    def ensure(self, conn: sqlite3.Connection, ensured: EnsuredKeys, keys: Iterable[str]) -> None:
        known = self._known.get(ensured.sql)
        if known is None:
            known = self._known[ensured.sql] = set()
        missing = [key for key in dict.fromkeys(keys) if key not in known]
        if missing:
            conn.executemany(ensured.sql, [(key,) for key in missing])
            self._uncommitted.append((known, missing))

    def mark(self) -> int:
        return len(self._uncommitted)

    def rolled_back_to(self, mark: int) -> None:
        del self._uncommitted[mark:]

    def committed(self) -> None:
        for known, keys in self._uncommitted:
            if len(known) + len(keys) > self.LIMIT:
                known.clear()
            known.update(keys)
        self._uncommitted.clear()


@attrs.define(eq=False)
class RowInsert:
    """A write that only inserts rows with one statement; returns the first row's timestamp.

    The statement's last parameter is a timestamp column: row `i` gets the first timestamp plus
    `i`. The writer merges the row inserts of one transaction into one `executemany` (one call
    into SQLite instead of one per write: it halved the writer's time in the entity benchmark);
    if that fails, each runs alone, and a failing one raises `on_conflict(rows)` to its caller
    only. Rows are tuples, and each stamped row lives only while SQLite binds it, so a
    transaction of thousands of rows gives the garbage collector nothing to walk. With
    `ensure`, the rows' first values are keys that `ensure` makes exist first.
    """

    sql: str
    rows: list[tuple[Any, ...]]
    on_conflict: Callable[[list[tuple[Any, ...]]], Exception]
    ensure: EnsuredKeys | None = None

    def __call__(self, txn: WriteTransaction) -> int:
        try:
            return _insert_all(txn, [self])
        except sqlite3.IntegrityError as exc:
            raise self.on_conflict(self.rows) from exc


def _insert_all(txn: WriteTransaction, inserts: list[RowInsert]) -> int:
    """Insert the rows of `inserts` (all with the first one's statement) with one
    `executemany`, stamped with consecutive timestamps; return the first timestamp."""
    head = inserts[0]
    first = txn.next_timestamps(sum(len(insert.rows) for insert in inserts))
    if head.ensure is not None:
        txn.ensure_keys(head.ensure, (row[0] for insert in inserts for row in insert.rows))
    rows = itertools.chain.from_iterable(insert.rows for insert in inserts)
    txn.connection.executemany(head.sql, _stamped(rows, first))
    return first


class PendingWrite(Generic[T]):
    """A write waiting for its commit, and who to tell: a parked task or a callback."""

    __slots__ = ("function", "on_done", "result", "task")

    def __init__(
        self,
        function: Callable[[WriteTransaction], T],
        task: trio.lowlevel.Task | None,
        on_done: Callable[[outcome.Outcome[T]], None] | None = None,
    ) -> None:
        self.function = function
        self.task = task
        self.on_done = on_done
        self.result: outcome.Outcome[T] | None = None


class FileClock:
    """The newest timestamp of a file, as its single writer connection knows it.

    Inside a write transaction, the newest event's timestamp is the file's clock: every write
    continues from it. The writer keeps it in memory and reads the file again only when
    another connection (another process) has committed since (`PRAGMA data_version`): a
    clock row read and updated by every transaction cost a SELECT, an UPDATE and a page
    written to the WAL each time.
    """

    def __init__(self) -> None:
        self._data_version: int | None = None
        self.last_timestamp = 0

    def read(self, conn: sqlite3.Connection) -> int:
        """The last timestamp handed out; call inside the write transaction."""
        (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        if data_version != self._data_version:
            (newest,) = conn.execute(
                "SELECT coalesce(max(db_timestamp), 0) FROM event_journal"
            ).fetchone()
            self.last_timestamp = max(self.last_timestamp, newest)
            self._data_version = data_version
        return self.last_timestamp


def commit_batch(
    conn: sqlite3.Connection,
    clock: FileClock,
    keys: KnownKeys,
    batch: list[PendingWrite[Any]],
) -> None:
    """Run `batch` in one transaction; each write's outcome lands in its `result`.

    Writes rarely fail, so the batch first runs without savepoints; only if one fails is the
    transaction rolled back and the batch run again with a savepoint around each write.
    """
    try:
        if not _try_commit(conn, clock, keys, batch, savepoints=False):
            # The rollback undid the writes that succeeded too: every write runs again.
            for pending in batch:
                pending.result = None
            _try_commit(conn, clock, keys, batch, savepoints=True)
    except sqlite3.Error as exc:
        keys.rolled_back_to(0)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        for pending in batch:
            pending.result = outcome.Error(exc)


def _run_merged(txn: WriteTransaction, batch: list[PendingWrite[Any]]) -> bool:
    """Run each run of consecutive `RowInsert`s with one statement as one executemany.
    False if one failed (the caller rolls back and runs the writes one by one)."""
    index = 0
    while index < len(batch):
        run = _row_insert_run(batch, index)
        if len(run) > 1:
            try:
                first = _insert_all(txn, run)
            except sqlite3.IntegrityError:
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
    for pending in batch[start:]:
        function = pending.function
        if not isinstance(function, RowInsert) or (
            run and (function.sql, function.ensure) != (run[0].sql, run[0].ensure)
        ):
            break
        run.append(function)
    return run


def _try_commit(
    conn: sqlite3.Connection,
    clock: FileClock,
    keys: KnownKeys,
    batch: list[PendingWrite[Any]],
    *,
    savepoints: bool,
) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    txn = WriteTransaction(conn, clock.read(conn), keys)
    if not savepoints and not _run_merged(txn, batch):
        conn.execute("ROLLBACK")
        keys.rolled_back_to(0)
        return False
    for pending in batch:
        if pending.result is not None:
            continue  # done by _run_merged
        if savepoints:
            conn.execute("SAVEPOINT write")
        mark = keys.mark()
        pending.result = outcome.capture(pending.function, txn)
        if isinstance(pending.result, outcome.Error):
            if not savepoints:
                conn.execute("ROLLBACK")
                keys.rolled_back_to(0)
                return False
            conn.execute("ROLLBACK TO write")
            keys.rolled_back_to(mark)
        if savepoints:
            conn.execute("RELEASE write")
    conn.execute("COMMIT")
    keys.committed()
    clock.last_timestamp = txn.last_timestamp
    return True
