"""Slices without events do not hold a projection's resume point back: every
`quiet_slices_every` seconds their offsets move to where the query has come (at the next
commit or save, or alone once the instance is idle), so a restart reads again only what came
after that, not the whole history (a real SQLite file)."""

from __future__ import annotations

import attrs
import trio

from fluvial.core.ids import SliceRange
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._handlers import AtLeastOnce, ExactlyOnce
from projection.projection_helpers import (
    NAME,
    Appender,
    Recorder,
    apply_to_model,
    assert_model_is_the_fold,
    projection,
    start,
    wait_for_commits_until,
    wait_for_model,
)


async def stored_resume_timestamp(journal: SqliteJournal) -> int:
    tracker = await journal.offset_store().load(NAME, SliceRange.all(), window=1)
    return tracker.resume_offset().timestamp


async def wait_for_resume_at(journal: SqliteJournal, timestamp: int) -> None:
    """Until the stored offsets resume at `timestamp`, and not past it."""

    async def reached() -> bool:
        return await stored_resume_timestamp(journal) >= timestamp

    await wait_for_commits_until(journal, reached)
    assert await stored_resume_timestamp(journal) == timestamp


async def test_a_restart_resumes_after_the_events_of_the_one_busy_slice(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    *_, last = await appender.append("a", *range(10))  # one entity: 1 slice of 1,024 has events
    often = attrs.evolve(projection(ExactlyOnce(apply_to_model)), quiet_slices_every=0.05)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, often)
        await wait_for_model(journal, 10)
        # Idle after its last commit, the instance saves the quiet slices' offsets alone.
        await wait_for_resume_at(journal, last.timestamp)
        nursery.cancel_scope.cancel()

    # And after the restart the projection goes on from there, everything once.
    await appender.append("b", 1, 2)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, often)
        await wait_for_model(journal, 12)
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


async def test_an_at_least_once_projection_saves_them_too(journal: SqliteJournal) -> None:
    appender = Appender(journal)
    *_, last = await appender.append("a", *range(10))
    recorder = Recorder()
    often = attrs.evolve(
        projection(AtLeastOnce(recorder.handle, save_after=0.01)), quiet_slices_every=0.05
    )
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, often)
        await recorder.wait_until(lambda: len(recorder.calls) == 10)
        await wait_for_resume_at(journal, last.timestamp)
        nursery.cancel_scope.cancel()


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
