"""What a SQLite journal file can refuse, as typed errors that name the file and say what to do.

Raw `sqlite3` errors never leave fluvial: `storage_error` turns each into one of these (the
original stays attached as `__cause__`). None of them means that something already stored was
changed: SQLite undoes the transaction it failed in.
"""

from __future__ import annotations

import sqlite3

from fluvial.core.errors import DataError
from fluvial.journal.api import JournalError


class JournalFileError(JournalError):
    """A SQLite journal file could not be used as asked; `path` names it.

    Raised as itself for failures SQLite does not classify further; the subclasses say what
    went wrong and what to do.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class JournalCannotOpen(JournalFileError):
    """The path names no file SQLite can open or create: a directory, a missing directory, or
    no permission. Point the journal at a file in an existing, writable directory."""


class JournalReadOnly(JournalFileError):
    """The file (or its directory, where SQLite keeps its `-wal` and `-shm` files) cannot be
    written. Give the process write permission to both."""


class JournalBusy(JournalFileError):
    """Another connection (usually another process) held the file's write lock for longer than
    the journal's `busy_timeout`. Nothing of the write was stored; retry it, or find what holds
    the lock."""


class JournalFull(JournalFileError):
    """The disk (or a size limit of the file) is full. Nothing of the write was stored; free
    space and retry."""


class JournalCorrupt(JournalFileError, DataError):
    """The file is not a readable SQLite database: truncated, damaged or of another format.
    fluvial changes nothing in it; restore it from a backup, or use another file."""


class NotAJournal(JournalFileError, DataError):
    """The file is another application's SQLite database, not a fluvial journal. fluvial
    refuses it before writing anything; use a file of its own for the journal."""


_WHAT_TO_DO = {
    sqlite3.SQLITE_BUSY: (
        JournalBusy,
        "another connection held the write lock for longer than the busy timeout; "
        "nothing of the write was stored (retry it, or find what holds the lock)",
    ),
    sqlite3.SQLITE_LOCKED: (
        JournalBusy,
        "the database is locked by another connection of this process; "
        "nothing of the write was stored",
    ),
    sqlite3.SQLITE_READONLY: (
        JournalReadOnly,
        "the file or its directory cannot be written; give the process write permission "
        "to both (SQLite keeps -wal and -shm files beside the journal)",
    ),
    sqlite3.SQLITE_PERM: (
        JournalReadOnly,
        "the file or its directory cannot be written; give the process write permission "
        "to both (SQLite keeps -wal and -shm files beside the journal)",
    ),
    sqlite3.SQLITE_FULL: (
        JournalFull,
        "the disk or the file's size limit is full; nothing of the write was stored "
        "(free space and retry)",
    ),
    sqlite3.SQLITE_CANTOPEN: (
        JournalCannotOpen,
        "SQLite cannot open this file; point the journal at a file in an existing, "
        "writable directory",
    ),
    sqlite3.SQLITE_CORRUPT: (
        JournalCorrupt,
        "the database file is damaged (truncated or overwritten); fluvial changes nothing "
        "in it: restore it from a backup",
    ),
    sqlite3.SQLITE_NOTADB: (
        JournalCorrupt,
        "the file is not a SQLite database; fluvial changes nothing in it: use another "
        "file for the journal, or restore this one from a backup",
    ),
}


def storage_error(path: str, error: sqlite3.Error) -> JournalFileError:
    """The typed error for a `sqlite3` error on the file at `path` (chain it with `from`)."""
    code = getattr(error, "sqlite_errorcode", None)
    # Extended result codes keep the primary code in their low byte.
    found = _WHAT_TO_DO.get(code & 0xFF) if isinstance(code, int) else None
    if found is None:
        return JournalFileError(path, f"SQLite failed ({error}); nothing stored was changed")
    error_type, what_to_do = found
    return error_type(path, f"{what_to_do} (SQLite: {error})")
