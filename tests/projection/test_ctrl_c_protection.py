"""A projection's tasks are fluvial's: Ctrl-C lands in the user's code around them, never
halfway through a handler, a save or trio's `start_soon` (which would strand a task that never
runs, and the user's nursery would wait for it forever)."""

from __future__ import annotations

import trio

from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._handlers import AtLeastOnce
from projection.projection_helpers import QUIET, Appender, Envelope, projection, start


async def test_a_projection_runs_ki_protected_and_the_users_code_does_not(
    journal: SqliteJournal,
) -> None:
    protected: list[bool] = []
    handled = trio.Event()

    async def handle(_envelope: Envelope) -> None:
        protected.append(trio.lowlevel.currently_ki_protected())
        handled.set()

    await Appender(journal).append("a", 1)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(AtLeastOnce(handle), source=QUIET))
        with trio.fail_after(10):
            await handled.wait()
        assert not trio.lowlevel.currently_ki_protected()  # the user's task
        nursery.cancel_scope.cancel()
    assert protected == [True]
