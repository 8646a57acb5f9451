"""The backtracking query of `LocalJournalSource` after a restart: it starts its span behind
where the query resumes, so that an event committed late behind the stored offsets (which the
run before had not reached with its own backtracking when it stopped) is still delivered."""

from __future__ import annotations

import trio
import trio.testing

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.journal.memory import MemoryJournal
from fluvial.projection._source import LocalJournalSource
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import Batch
from producer_fixtures import Appender


class ConcurrentMemoryJournal(MemoryJournal):
    """The memory journal, declared to have concurrent writers (`HasConcurrentWriters`)."""

    async def current_timestamp(self) -> int:
        return self._clock + 60_000_000  # its events are all a minute behind its clock


async def test_after_a_restart_backtracking_covers_the_span_behind_the_resume_offset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = ConcurrentMemoryJournal()
    appender = Appender(journal)
    late = (await appender.append("late", 1))[0]  # committed after the run before passed it
    newest = (await appender.append("other", 2))[0]
    settings = SourceSettings(backtracking_interval=1.0, live=False)
    source = LocalJournalSource(journal, late.entity_type, SliceRange.all(), settings)
    resume = TimestampOffset(newest.timestamp, {newest.persistence_id: newest.seq_nr})
    send, receive = trio.open_memory_channel[Batch](10)
    backtracked: list[EventRecord] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, resume, send)
            async for records, path in receive:
                if path is EnvelopeSource.BACKTRACKING:
                    backtracked.extend(records)
                    break
            nursery.cancel_scope.cancel()
    assert (late.persistence_id, late.seq_nr) in {(r.persistence_id, r.seq_nr) for r in backtracked}


async def test_after_a_restart_a_fast_catch_up_does_not_skip_the_span_behind_the_resume_offset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Down for longer than the span: the query catches up far past where it resumed before
    # the backtracking query's first round; the late event behind the resume offset is still
    # the backtracking query's to deliver (no query of this run has read there).
    journal = ConcurrentMemoryJournal()
    appender = Appender(journal)
    late = (await appender.append("late", 1))[0]
    resumed_at = (await appender.append("other", 2))[0]
    settings = SourceSettings(backtracking_interval=1.0, live=False)
    journal._clock += int(10 * settings.backtracking_span * 1_000_000)  # the time it was down
    await appender.append("other", 3)
    source = LocalJournalSource(journal, late.entity_type, SliceRange.all(), settings)
    resume = TimestampOffset(resumed_at.timestamp, {resumed_at.persistence_id: 1})
    send, receive = trio.open_memory_channel[Batch](10)
    backtracked: list[EventRecord] = []
    with trio.move_on_after(10.0):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, resume, send)
            async for records, path in receive:
                if path is EnvelopeSource.BACKTRACKING:
                    backtracked.extend(records)
    assert (late.persistence_id, late.seq_nr) in {(r.persistence_id, r.seq_nr) for r in backtracked}
