"""What the writer of a file remembers between its transactions, so that the common write
costs no extra query: the file's clock, the entity keys it has committed, and each entity's
highest seq nr. Each is read again from the file when another connection has written it.

Everything here runs in the writer thread (see _transaction.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

import attrs


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
        """Run `ensured` (inside the open transaction) for each of `keys` not committed yet."""
        known = self._known.get(ensured.sql)
        if known is None:
            known = self._known[ensured.sql] = set()
        missing = [key for key in dict.fromkeys(keys) if key not in known]
        if missing:
            conn.executemany(ensured.sql, [(key,) for key in missing])
            self._uncommitted.append((known, missing))

    def mark(self) -> int:
        """A point to roll back to: before the next write's keys."""
        return len(self._uncommitted)

    def rolled_back_to(self, mark: int) -> None:
        """Forget the keys added since `mark` (their savepoint was rolled back)."""
        del self._uncommitted[mark:]

    def committed(self) -> None:
        """Count the open transaction's keys as committed."""
        for known, keys in self._uncommitted:
            if len(known) + len(keys) > self.LIMIT:
                known.clear()
            known.update(keys)
        self._uncommitted.clear()


@attrs.frozen
class SeqNrCheck:
    """How a `RowInsert` of one entity's events checks that they follow its stored ones: the
    rows lead with (key, seq nr) in seq nr order, `highest_sql` selects a key's highest stored
    seq nr (0 if none) with the key as its parameter, and `on_gap(key, seq_nr, highest)` is
    the error for a first seq nr beyond highest + 1."""

    highest_sql: str
    on_gap: Callable[[str, int, int], Exception]


class HighestSeqNrs:
    """The highest seq nr of each key the writer has appended to or looked up, so that the
    check of an append costs no query. Those of the open transaction count once it commits;
    all are forgotten when another connection has committed to the file."""

    LIMIT = 100_000  # keys remembered; past it, start over (it only costs queries)

    def __init__(self) -> None:
        self._committed: dict[str, int] = {}
        self._uncommitted: dict[str, int] = {}
        self._log: list[tuple[str, int]] = []  # the uncommitted ones in order, to roll back

    def highest(self, conn: sqlite3.Connection, sql: str, key: str) -> int:
        """The highest seq nr of `key`, stored or appended in the open transaction."""
        highest = self._uncommitted.get(key)
        if highest is None:
            highest = self._committed.get(key)
            if highest is None:
                (highest,) = conn.execute(sql, (key,)).fetchone()
                # Read inside the transaction: what is committed, since this transaction
                # appended nothing of this key yet.
                if len(self._committed) >= self.LIMIT:
                    self._committed.clear()
                self._committed[key] = highest
        return highest

    def check_follows(
        self, conn: sqlite3.Connection, check: SeqNrCheck, runs: Iterable[list[tuple[Any, ...]]]
    ) -> None:
        """Raise `check.on_gap` unless each of `runs` (one key's rows, leading with key and
        seq nr, in seq nr order) starts at most one past the key's highest seq nr (`highest`),
        and note each run's last seq nr as appended (`appended`).

        One call for a transaction's runs: three calls per run cost ~2,000 instructions per
        append in the writer thread (benchmarks/callgrind_commands.py)."""
        uncommitted, committed, log = self._uncommitted, self._committed, self._log
        for rows in runs:
            key, first = rows[0][0], rows[0][1]
            highest = uncommitted.get(key)
            if highest is None:
                highest = committed.get(key)
                if highest is None:
                    highest = self.highest(conn, check.highest_sql, key)
            if first > highest + 1:
                raise check.on_gap(key, first, highest)
            last = rows[-1][1]
            if last > highest:
                highest = last
            uncommitted[key] = highest
            log.append((key, highest))

    def appended(self, key: str, highest: int) -> None:
        """Note that the open transaction appended `key`'s events up to `highest`."""
        self._uncommitted[key] = highest
        self._log.append((key, highest))

    def mark(self) -> int:
        """A point to roll back to: before the next write's appends."""
        return len(self._log)

    def rolled_back_to(self, mark: int) -> None:
        """Forget the appends noted since `mark` (their savepoint was rolled back)."""
        if mark < len(self._log):
            del self._log[mark:]
            self._uncommitted = dict(self._log)

    def committed(self) -> None:
        """Count the open transaction's appends as committed."""
        if len(self._committed) + len(self._uncommitted) > self.LIMIT:
            self._committed.clear()
        self._committed.update(self._uncommitted)
        self._uncommitted.clear()
        self._log.clear()

    def forget(self) -> None:
        """Forget everything: another connection may have appended to any key."""
        self._committed.clear()


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

    def refresh(self, conn: sqlite3.Connection) -> bool:
        """Read the file's clock again if another connection has committed since the last
        call (True then); call inside the write transaction."""
        (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        if data_version == self._data_version:
            return False
        (newest,) = conn.execute(
            "SELECT coalesce(max(db_timestamp), 0) FROM event_journal"
        ).fetchone()
        self.last_timestamp = max(self.last_timestamp, newest)
        self._data_version = data_version
        return True
