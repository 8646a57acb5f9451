"""Slices without events do not hold a projection's resume point back: every
`quiet_slices_every` seconds their offsets move to where the query has come, so a restart
reads again only what came after that, not the whole history (a real SQLite file)."""

from __future__ import annotations

import attrs
import trio

from fluvial.core.ids import SliceRange
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._handlers import ExactlyOnce
from projection.projection_helpers import (
    NAME,
    Appender,
    apply_to_model,
    assert_model_is_the_fold,
    projection,
    start,
    wait_for_model,
)


async def stored_resume_timestamp(journal: SqliteJournal) -> int:
    tracker = await journal.offset_store().load(NAME, SliceRange.all(), window=1)
    return tracker.resume_offset().timestamp


async def test_a_restart_resumes_after_the_events_of_the_one_busy_slice(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    first = await appender.append("a", *range(10))  # one entity: one slice of 1,024 has events
    every = attrs.evolve(projection(ExactlyOnce(apply_to_model)), quiet_slices_every=0.05)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, every)
        await wait_for_model(journal, 10)
        await trio.sleep(0.1)  # the move is due at the next commit
        await appender.append("a", 10)
        await wait_for_model(journal, 11)
        nursery.cancel_scope.cancel()
    # The next commit moved the quiet slices at least past the first ten events (to the
    # eleventh if the query brought it first; else its live copy was that commit).
    assert await stored_resume_timestamp(journal) >= first[-1].timestamp

    # And after the restart the projection goes on from there, everything once.
    await appender.append("b", 1, 2)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, every)
        await wait_for_model(journal, 13)
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


async def test_without_the_move_the_restart_would_read_everything_again(
    journal: SqliteJournal,
) -> None:
    """What the move is for: with it not due yet, the slices without events have no offset,
    and the resume point is the start."""
    appender = Appender(journal)
    await appender.append("a", *range(10))
    rarely = attrs.evolve(projection(ExactlyOnce(apply_to_model)), quiet_slices_every=3600)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, rarely)
        await wait_for_model(journal, 10)
        nursery.cancel_scope.cancel()
    assert await stored_resume_timestamp(journal) == 0
