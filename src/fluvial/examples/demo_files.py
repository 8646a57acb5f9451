"""The files of `fluvial demo`: it replaces the databases an earlier demo wrote, and refuses
(changing nothing) any other file at their paths: a user's journal, another database, a text
file. The services mark their databases as the demo's (`demo_process.mark_as_demo_file`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fluvial import UsageError
from fluvial.examples.demo_process import MARKER_TABLE, MARKER_TEXT

# SQLite's files beside a database: the write-ahead log, its index, a rollback journal.
_SIDECARS = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"


class DemoFileRefused(UsageError):
    """`fluvial demo --db FILE` found a file that the demo did not write; nothing was changed."""


def consumer_file(journal: Path) -> Path:
    """The consumer's database, beside the producer's journal: `shop.db` -> `shop-consumer.db`."""
    return journal.with_name(f"{journal.stem}-consumer{journal.suffix}")


def is_demo_journal(path: Path) -> bool:
    """Whether `path` is a journal that `fluvial demo` wrote (it holds the demo's marker).

    Reads without creating anything: a file that is not SQLite is not opened as a database,
    and a database without both a write-ahead log and its index is opened immutable (a
    read-only open of a log without its `-shm` would create one). Any file SQLite cannot read
    (locked, corrupt) answers False.
    """
    if not path.is_file():
        return False
    with path.open("rb") as file:
        if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            return False
    # With a log and its index (a demo killed while running), the marker may still be in the
    # log: read through SQLite's usual read-only path, which needs both to create nothing.
    log_and_index = all(path.with_name(path.name + s).exists() for s in ("-wal", "-shm"))
    uri = path.resolve().as_uri() + ("?mode=ro" if log_and_index else "?mode=ro&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            row = connection.execute(f"SELECT note FROM {MARKER_TABLE}").fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == MARKER_TEXT


def clear_previous_demo(*paths: Path) -> None:
    """Delete the demo databases at `paths` (and their SQLite sidecar files) from an earlier
    run.

    Raises `DemoFileRefused`, deleting nothing at any of the paths, if one exists and is not a
    demo database, or if a sidecar file of one is there without its database (a log of
    something else). A path that does not exist is left so.
    """
    for path in paths:
        _check_is_demo_file_or_nothing(path)
    for path in paths:
        for file in [path, *_sidecars(path)]:
            file.unlink(missing_ok=True)


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in _SIDECARS]


def _check_is_demo_file_or_nothing(path: Path) -> None:
    if not path.exists():
        orphans = [str(s) for s in _sidecars(path) if s.exists()]
        if orphans:
            raise DemoFileRefused(
                f"{', '.join(orphans)} exists without {path}: not removed; "
                "delete it yourself or choose another --db"
            )
    elif not is_demo_journal(path):
        raise DemoFileRefused(
            f"{path} exists and is not a journal written by `fluvial demo`: left unchanged; "
            "choose another --db (or delete the file yourself)"
        )


def resolved(path: Path) -> Path:
    """`path` with its symlinks followed, even to a file that does not exist yet."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
        raise DemoFileRefused(f"{path} cannot be resolved: {exc}; choose another --db") from exc
