"""A pool of psycopg connections, each call's work run whole in a trio worker thread.

psycopg is sync, so the work of a call (a whole transaction, BEGIN to COMMIT) runs in one
worker thread, and trio waits for it even when cancelled: a call either did everything and
returns, or raised Cancelled before it started; never a transaction cut in half. The pool waits
for a free connection in trio (cancellable, no thread blocked), opens connections when first
needed, and drops a broken one (the next call opens a new one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import trio

from fluvial.journal.api import JournalClosed
from fluvial.journal.postgres._errors import PostgresUnavailable

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]


class ConnectionPool:
    """At most `size` connections to `dsn`, each with `search_path` set to `schema`."""

    def __init__(self, dsn: str, schema: str, size: int, *, connect_timeout: float) -> None:
        self._dsn = dsn
        self._schema = schema
        self._connect_timeout = connect_timeout
        self._free = trio.CapacityLimiter(size)
        self._idle: list[Connection] = []
        self._closed = False

    async def run(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in a worker thread; a connection failure raises
        PostgresUnavailable, every other error comes out as itself."""
        self._check_open()
        async with self._free:
            self._check_open()  # it may have closed while this call waited
            conn = self._idle.pop() if self._idle else None
            return await trio.to_thread.run_sync(self._run, conn, work)

    def _check_open(self) -> None:
        if self._closed:
            raise JournalClosed(f"on PostgreSQL (schema {self._schema})")

    def _run(self, conn: Connection | None, work: Callable[[Connection], T]) -> T:
        try:
            if conn is None:
                conn = self._connect()
            result = work(conn)
        except psycopg.OperationalError as exc:
            self._give_back(conn)  # a broken one is closed, not given back
            if conn is not None and not conn.broken:
                raise  # the server refused this work (a deadlock, a timeout): as itself
            raise PostgresUnavailable(str(exc).strip()) from exc
        except BaseException:
            self._give_back(conn)
            raise
        self._give_back(conn)
        return result

    def _connect(self) -> Connection:
        return psycopg.connect(
            self._dsn,
            autocommit=True,  # transactions are explicit: `with conn.transaction()`
            connect_timeout=max(1, round(self._connect_timeout)),
            options=f"-c search_path={self._schema}",
            application_name=f"fluvial:{self._schema}",  # tells them apart in pg_stat_activity
        )

    def _give_back(self, conn: Connection | None) -> None:
        # list.append is atomic under the GIL; `run` pops only under the limiter.
        if conn is None:
            return
        if self._closed or conn.broken or conn.closed:
            conn.close()
        else:
            self._idle.append(conn)

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.to_thread.run_sync(conn.close)
