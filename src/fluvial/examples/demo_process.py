"""What the two service processes of `fluvial demo` share: where they listen, how they print,
how they mark their files as the demo's, and how they end when the demo lets them go."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import trio

from fluvial import WriteTransaction
from fluvial.nursery_errors import unwrap_lone_error

HOST = "127.0.0.1"  # loopback only: the demo's services are reachable from this machine alone

# The table that says "the demo made this file". Its name and its one row are both checked,
# so that an unrelated database that happens to have such a table is still not deleted.
MARKER_TABLE = "fluvial_demo"
MARKER_TEXT = "journal written by `fluvial demo`; the next run replaces it"


def say(text: str) -> None:
    """Print one line at once: the demo reads it from a pipe as it comes."""
    print(text, flush=True)


def mark_as_demo_file(txn: WriteTransaction) -> None:
    """Mark the database as the demo's (once), so that the next demo may replace it."""
    connection = txn.connection
    connection.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (note TEXT NOT NULL)")
    if connection.execute(f"SELECT count(*) FROM {MARKER_TABLE}").fetchone()[0] == 0:
        connection.execute(f"INSERT INTO {MARKER_TABLE} VALUES (?)", (MARKER_TEXT,))


async def until_stdin_closes(scope: trio.CancelScope) -> None:
    """Cancel `scope` once standard input closes: the demo closes it to stop a service, and it
    closes too when the demo itself dies, so that no service outlives it."""
    # A thread, since a blocking read is what works on every platform; abandoned on cancel.
    await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
    scope.cancel()


def run_service(service: Callable[[], Awaitable[None]]) -> None:
    """Run `service` in trio; Ctrl-C ends it with status 130 and no traceback (the demo shows
    its own)."""
    try:
        with unwrap_lone_error():
            trio.run(service)
    except KeyboardInterrupt:
        sys.exit(130)
