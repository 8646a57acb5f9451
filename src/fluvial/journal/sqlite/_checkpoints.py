"""When and where the writer's WAL is copied back into the database file (checkpointed).

A PASSIVE checkpoint of the ~4,000 pages the writer lets the WAL grow to takes 10-30 ms here
(the copy grows with the frames copied; its two fsyncs are ~0.3 ms each), and run by the
writer it holds up every write that arrives meanwhile. So it runs in two passes:

1. The bulk, in a thread of its own with its own connection, while the writer goes on
   committing (WAL lets one checkpoint run beside the writer).
2. The rest, by the writer itself at its next idle moment once the bulk is done: only the
   frames appended during the bulk are left, so it is short; and as no write runs beside it,
   it backfills the whole WAL, so that the next write starts the WAL again from its beginning.
   A checkpointer alone never lets that happen: tried first, the WAL grew to ~400 MB.

SQLite's automatic checkpoint (inside a commit, at four times the threshold) stays as the
backstop for a writer that never idles, and a checkpointer that failed.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable

from fluvial.journal.sqlite._file import CHECKPOINT_PAGES

log = logging.getLogger("fluvial.journal")


class WalCheckpoints:
    """The checkpoints of one writer's WAL: `written` and `idle` are called by the writer
    thread; `start` and `stop` by whoever owns the writer, around its life."""

    def __init__(
        self, path: str, writer: sqlite3.Connection, connect: Callable[[], sqlite3.Connection]
    ) -> None:
        self._path = path
        self._writer = writer
        self._connect = connect  # the checkpointer's connection, opened in its thread
        self._pages = 0  # written since the last bulk pass was asked for
        self._bulk_asked = False  # and its rest not yet checkpointed by the writer
        self._bulk_done = threading.Event()
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()  # False: stop
        self._thread = threading.Thread(
            target=self._checkpointer_thread, name=f"fluvial-checkpointer:{path}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the checkpointer thread, after the pass it may be in (blocks; once the writer
        has stopped, so that nothing asks for another)."""
        self._requests.put(False)
        self._thread.join()

    def written(self, pages: int) -> None:
        """After each commit: ask for a bulk pass once the threshold of pages was written."""
        self._pages += pages
        if self._pages >= CHECKPOINT_PAGES and not self._bulk_asked:
            self._bulk_asked = True
            self._requests.put(True)

    def idle(self) -> None:
        """When no write waits: checkpoint the rest of a finished bulk pass."""
        if self._bulk_asked and self._bulk_done.is_set():
            self._bulk_done.clear()
            self._bulk_asked = False
            self._pages = 0
            self._logged(lambda: _passive_checkpoint(self._writer))

    def _checkpointer_thread(self) -> None:
        conn: sqlite3.Connection | None = None

        def connection() -> sqlite3.Connection:
            nonlocal conn
            if conn is None:  # opened here, and again after it failed
                conn = self._connect()
            return conn

        try:
            while self._requests.get():
                self._logged(lambda: self._bulk_pass(connection()))
                self._bulk_done.set()
        finally:
            if conn is not None:
                conn.close()

    def _logged(self, checkpoint: Callable[[], None]) -> None:
        try:
            checkpoint()
        except Exception:
            log.warning("%s: checkpointing the WAL failed", self._path, exc_info=True)

    def _bulk_pass(self, conn: sqlite3.Connection) -> None:
        """The checkpointer thread's pass (a method, so that a test can slow it down)."""
        _passive_checkpoint(conn)


def _passive_checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
