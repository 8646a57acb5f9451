"""A pool of psycopg connections, each call's work run whole in a trio worker thread, retried
with backoff while the server cannot be reached.

psycopg is sync, so the work of a call (a whole transaction, BEGIN to COMMIT) runs in one
worker thread, and trio waits for it even when cancelled: a call either did everything and
returns, or raised Cancelled before it started; never a transaction cut in half. The pool waits
for a free connection in trio (cancellable, no thread blocked), opens connections when first
needed, and drops a broken one.

Faults: a call whose connection cannot be opened did nothing, so it is tried again, after
0.05 s, 0.1 s, ... up to 1 s apart, until `retry_for` seconds have passed since its first
failure, then raises PostgresUnavailable. A call whose connection breaks while its work runs
is tried again only if the work says it is `idempotent` (reads, snapshot upserts, events from
elsewhere: their second run answers the same); any other raises `PostgresOutcomeUnknown`, since the
server may have committed it: the group commit answers those by reading back
(_group_commit.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import trio

from fluvial.journal.api import JournalClosed
from fluvial.journal.postgres._errors import PostgresOutcomeUnknown, PostgresUnavailable

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class _NotConnected(Exception):
    """The connection could not be opened: the work did not start."""

    def __init__(self, cause: psycopg.OperationalError) -> None:
        super().__init__(str(cause).strip())
        self.cause = cause


class ConnectionPool:
    """At most `size` connections to `dsn`, each with `search_path` set to `schema`; calls
    retried for up to `retry_for` seconds while the server cannot be reached."""

    def __init__(
        self, dsn: str, schema: str, size: int, *, connect_timeout: float, retry_for: float
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._connect_timeout = connect_timeout
        self._retry_for = retry_for
        self._free = trio.CapacityLimiter(size)
        self._idle: list[Connection] = []
        self._closed = False

    async def run(
        self, work: Callable[[Connection], T], *, idempotent: bool = False, retry: bool = True
    ) -> T:
        """`work(connection)` in a worker thread; every error of the work comes out as itself,
        except the connection's: retried as the module says, then PostgresUnavailable (or
        PostgresOutcomeUnknown). `retry=False`: no retries (opening the journal fails fast)."""
        deadline: float | None = None
        backoff = _FIRST_BACKOFF
        while True:
            try:
                return await self._attempt(work)
            except _NotConnected as exc:
                failure: PostgresUnavailable = PostgresUnavailable(str(exc))
                failure.__cause__ = exc.cause
            except PostgresOutcomeUnknown as exc:
                if not idempotent:
                    raise
                failure = exc
            now = trio.current_time()
            if deadline is None:
                deadline = now + self._retry_for
            if not retry or now >= deadline:
                if retry:
                    failure.add_note(f"tried for {self._retry_for:g} s (retry_for)")
                raise failure
            await trio.sleep(min(backoff, deadline - now))  # the last try at the deadline
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _attempt(self, work: Callable[[Connection], T]) -> T:
        self._check_open()
        async with self._free:
            self._check_open()  # it may have closed while this call waited
            conn = self._idle.pop() if self._idle else None
            return await trio.to_thread.run_sync(self._run, conn, work)

    def _check_open(self) -> None:
        if self._closed:
            raise JournalClosed(f"on PostgreSQL (schema {self._schema})")

    def _run(self, conn: Connection | None, work: Callable[[Connection], T]) -> T:
        if conn is None:
            try:
                conn = self._connect()
            except psycopg.OperationalError as exc:
                raise _NotConnected(exc) from exc
        try:
            result = work(conn)
        except psycopg.OperationalError as exc:
            self._give_back(conn)  # a broken one is closed, not given back
            if not conn.broken:
                raise  # the server refused this work (a deadlock, a timeout): as itself
            raise PostgresOutcomeUnknown(str(exc).strip()) from exc
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

    def _give_back(self, conn: Connection) -> None:
        # list.append is atomic under the GIL; `_attempt` pops only under the limiter.
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
