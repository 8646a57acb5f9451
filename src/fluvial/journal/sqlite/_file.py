"""Opening a journal file: the arguments, checked where they are given; the path and the file,
checked before anything writes to it; and connections set up the way fluvial uses them.

Real deployments open files in ways tests rarely do: two processes creating one new file at
the same moment, a file of another application, a path that is a directory, a lock held by
another process. Each ends here either in a working connection or in a typed error that names
the file (_errors.py), never in a raw `sqlite3` error, and never after changing the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Literal

import attrs

from fluvial.core.errors import UsageError
from fluvial.journal.sqlite._errors import JournalCannotOpen, JournalReadOnly, storage_error
from fluvial.journal.sqlite._schema import identify, migrate

Durability = Literal["process", "power-loss"]

DEFAULT_BUSY_TIMEOUT = 5.0

# The WAL is checkpointed once about this many pages were written since the last checkpoint:
# most of it by a thread of its own, the rest by the writer when it has nothing else to do
# (_checkpoints.py); SQLite's own automatic checkpoint stays as a backstop at four times that,
# for a writer that never idles.
CHECKPOINT_PAGES = 4000

# How long an opening waits before trying again after SQLite refused it as busy without
# waiting (it does so where waiting could deadlock, as when two connections switch a new file
# to WAL at once).
_OPEN_RETRY_INTERVAL = 0.01


@attrs.frozen
class FileOptions:
    """How fluvial uses a journal file; see `open_sqlite_journal`. `checked` refuses what
    cannot work with a UsageError."""

    durability: Durability = "process"
    readers: int = 4
    poll_interval: float = 0.5
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT

    @classmethod
    def checked(
        cls, *, durability: str, readers: int, poll_interval: float, busy_timeout: float
    ) -> FileOptions:
        """The options, or UsageError naming the first argument that cannot work."""
        if durability not in ("process", "power-loss"):
            raise UsageError(f"durability must be 'process' or 'power-loss', not {durability!r}")
        if isinstance(readers, bool) or not isinstance(readers, int) or readers < 1:
            raise UsageError(f"readers must be an int >= 1, not {readers!r}")
        if not _is_number(poll_interval) or not poll_interval > 0:
            raise UsageError(
                f"poll_interval must be a number of seconds > 0, not {poll_interval!r}"
            )
        if not _is_number(busy_timeout) or not 0 <= busy_timeout < 2**31 / 1000:
            raise UsageError(
                f"busy_timeout must be a finite number of seconds >= 0, not {busy_timeout!r}"
            )
        return cls(
            durability="power-loss" if durability == "power-loss" else "process",
            readers=readers,
            poll_interval=float(poll_interval),
            busy_timeout=float(busy_timeout),
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def checked_path(path: str | Path) -> str:
    """`path` as a string, or UsageError for what cannot name one journal file."""
    if not isinstance(path, str | os.PathLike):
        raise UsageError(f"a journal's path is a str or a pathlib.Path, not {path!r}")
    name = os.fspath(path)
    if not isinstance(name, str):
        raise UsageError(f"a journal's path is a str or a pathlib.Path, not {path!r}")
    if name in ("", ":memory:"):
        # SQLite gives each connection its own in-memory database, and the journal opens a
        # writer and several readers: they would not see each other's events.
        raise UsageError(
            f"the SQLite journal needs a file, not {name!r} (an in-memory SQLite database "
            "is private to one connection, and the journal uses several): use "
            "fluvial.testing.MemoryJournal for a journal in memory, or a file in a "
            "temporary directory"
        )
    return name


def connect(
    path: str,
    durability: Durability,
    *,
    writer: bool = False,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> sqlite3.Connection:
    """A connection set up the way every fluvial connection to a journal file is."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a killed process; FULL also survives power loss, at an fsync
        # a commit.
        conn.execute("PRAGMA synchronous=" + ("FULL" if durability == "power-loss" else "NORMAL"))
        if writer:
            # The WAL is checkpointed off the path of the commits (_checkpoints.py);
            # SQLite's automatic checkpoint inside a commit is only the backstop.
            conn.execute(f"PRAGMA wal_autocheckpoint={4 * CHECKPOINT_PAGES}")
            # 32 MiB of page cache instead of 2: a commit of 1,000 entities' events updates
            # hundreds of pages of the per-entity index, which then stay in memory.
            conn.execute("PRAGMA cache_size=-32768")
    except BaseException:
        conn.close()
        raise
    return conn


def open_writer(path: str, options: FileOptions) -> sqlite3.Connection:
    """The writer's connection to the journal file at `path`, created or migrated (blocks:
    run it in a worker thread).

    Raises JournalFileError (a subclass saying what is wrong) or SchemaVersionTooNew; the
    file is then as it was.
    """
    _check_place(path)
    deadline = time.monotonic() + options.busy_timeout
    while True:
        try:
            return _open_writer_once(path, options)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise storage_error(path, exc) from exc
        except sqlite3.Error as exc:
            raise storage_error(path, exc) from exc
        time.sleep(_OPEN_RETRY_INTERVAL)


def _open_writer_once(path: str, options: FileOptions) -> sqlite3.Connection:
    _refuse_foreign_file(path, options.busy_timeout)
    conn = connect(path, options.durability, writer=True, busy_timeout=options.busy_timeout)
    try:
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_place(path: str) -> None:
    """Raise JournalCannotOpen for a path where no journal file can be, JournalReadOnly for
    a file this process cannot write."""
    if os.path.isdir(path):
        raise JournalCannotOpen(
            path,
            "is a directory; name a file for the journal, such as "
            f"{os.path.join(path, 'journal.db')}",
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise JournalCannotOpen(path, f"the directory {directory} does not exist; create it first")
    # SQLite would open it read-only and fail at the first write; opening writes nothing.
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise JournalReadOnly(
            path,
            "the file cannot be written; give the process write permission to it (and to "
            "its directory, where SQLite keeps its -wal and -shm files)",
        )


def _refuse_foreign_file(path: str, busy_timeout: float) -> None:
    """Raise NotAJournal, JournalCorrupt or SchemaVersionTooNew before `connect` switches the
    file to WAL, so that a file fluvial must not use is not modified at all. (`migrate` checks
    again, inside its transaction.)"""
    try:
        if os.path.getsize(path) == 0:
            return  # a new file
    except FileNotFoundError:
        return
    with contextlib.closing(
        sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    ) as conn:
        # One read transaction: a process creating the file may commit between two reads.
        conn.execute("BEGIN")
        try:
            identify(conn, path)
        finally:
            conn.execute("ROLLBACK")
