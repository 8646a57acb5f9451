"""Any journal as a projection's source: three paths into one stream of batches.

- query: events-by-slices from the resume offset, catching up and then following commits;
  on a journal with concurrent writers (`HasConcurrentWriters`: PostgreSQL) only up to
  `SourceSettings.behind_current_time` behind the journal's clock, so that most transactions
  that took an earlier timestamp have committed before the query passes it;
- backtracking: a second events-by-slices query, with its own position, following the first
  (and, with concurrent writers, `backtracking_behind_current_time` behind the journal's
  clock), without payloads, so that an event committed late by a concurrent writer, behind
  what the query has passed, is still delivered (its payload is loaded only if it is
  accepted: `fluvial.core.envelope_admission.Load`). SQLite hands out timestamps inside its
  serialized write transaction, so there it finds only duplicates;
- live: events published in-process right after commit, with no database read, when the
  journal has a live path (`HasLivePath`: SQLite and memory do).

Each path delivers `(records, source)` batches; the offset tracker drops what two paths
both deliver. Only the generic `Journal` protocol is used, so every backend is a source.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from fluvial._wakeup import send_eagerly
from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.journal.api import MAX_TIMESTAMP, HasConcurrentWriters, HasLivePath, Journal
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection._supervision import open_supervisor
from fluvial.projection.api import Batch


class LocalJournalSource:
    """The events of one entity type and slice range of a journal, by the query, the live
    path and the backtracking query (see the module docstring); a `Source` that knows its
    latest event timestamp (`HasLatestEventTimestamp`).

    Its `first_sight` rule is the journal's: `PREVIOUS_OLDER_THAN_WINDOW` for a journal with
    concurrent writers (`HasConcurrentWriters`), else `QUERY_IN_COMMIT_ORDER`."""

    def __init__(
        self,
        journal: Journal,
        entity_type: str,
        slices: SliceRange,
        settings: SourceSettings,
    ) -> None:
        self.journal = journal
        self.entity_type = entity_type
        self.slices = slices
        self.settings = settings
        self._clock = journal if isinstance(journal, HasConcurrentWriters) else None
        self.first_sight = (
            FirstSight.QUERY_IN_COMMIT_ORDER
            if self._clock is None
            else FirstSight.PREVIOUS_OLDER_THAN_WINDOW
        )
        self._query_offset = TimestampOffset.start()

    async def run(
        self,
        offset: TimestampOffset,
        send: trio.MemorySendChannel[Batch],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """See `Source.run`."""
        self._query_offset = offset
        follow_delay = 0.0
        async with open_supervisor() as supervisor:  # errors come out as themselves
            if self.settings.live and isinstance(self.journal, HasLivePath):
                await supervisor.start(self._live, self.journal, send)
                follow_delay = self.settings.follow_delay
            if self.settings.backtracking_interval is not None:
                supervisor.start_soon(
                    self._backtracking, send, self.settings.backtracking_interval, offset.timestamp
                )
            task_status.started()
            await supervisor.run(self._query, send, follow_delay)

    async def replay(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int
    ) -> Sequence[EventRecord]:
        """See `Source.replay`."""
        count = to_seq_nr - from_seq_nr + 1
        return await self.journal.read_events(persistence_id, from_seq_nr, to_seq_nr, count)

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """See `Source.load_event`."""
        return await self.journal.load_event(persistence_id, seq_nr)

    async def event_timestamp(self, persistence_id: str, seq_nr: int) -> int | None:
        """See `Source.event_timestamp` (reads the whole event: the `Journal` protocol has no
        narrower read)."""
        record = await self.journal.load_event(persistence_id, seq_nr)
        return None if record is None else record.timestamp

    async def latest_event_timestamp(self) -> int | None:
        """See `HasLatestEventTimestamp`: the journal's `latest_event_timestamp` of this
        source's entity type and slices."""
        return await self.journal.latest_event_timestamp(self.entity_type, self.slices)

    async def _query(self, send: trio.MemorySendChannel[Batch], follow_delay: float) -> None:
        journal, page_size = self.journal, self.settings.page_size
        behind = _microseconds(self.settings.behind_current_time)
        until: int | None = None  # how far to read, fixed while catching up
        while True:
            seen = journal.append_count()
            if until is None:
                until = await self._behind_current_time(behind)
            page = await journal.read_events_by_slices(
                self.entity_type, self.slices, self._query_offset, page_size, to_timestamp=until
            )
            if page:
                offset = self._query_offset
                for record in page:
                    offset = offset.advanced_to(record)
                self._query_offset = offset
                await send.send((page, EnvelopeSource.QUERY))
            if len(page) < page_size:
                await journal.wait_for_new_events(seen)
                if follow_delay:
                    await trio.sleep(follow_delay)  # the live path delivers them meanwhile
                until = None

    async def _backtracking(
        self, send: trio.MemorySendChannel[Batch], interval: float, resumed: int
    ) -> None:
        span = _microseconds(self.settings.backtracking_span)
        behind = _microseconds(self.settings.backtracking_behind_current_time)
        # From the span behind where the query resumed (`resumed`): what a late commit may
        # have left there before a restart, the backtracking of the run before may not have
        # reached. That span comes first, however far the query has caught up since.
        after = TimestampOffset(max(0, resumed - span))
        while True:
            await trio.sleep(interval)
            until = min(self._query_offset.timestamp, await self._behind_current_time(behind))
            if after.timestamp < resumed:
                until = min(until, resumed)
            elif after.timestamp < until - span:
                # Fallen behind by more than the span where this run's query has read (it
                # caught up on old events, committed long before it read them): no late
                # commit is back there.
                after = TimestampOffset(until - span)
            while page := await self.journal.read_events_by_slices(
                self.entity_type,
                self.slices,
                after,
                self.settings.page_size,
                to_timestamp=until,
                with_payloads=False,
            ):
                await send.send((page, EnvelopeSource.BACKTRACKING))
                for record in page:
                    after = after.advanced_to(record)
            if until == resumed and after.timestamp < resumed:
                after = TimestampOffset(resumed)  # read up to there: what follows is the query's

    async def _behind_current_time(self, behind: int) -> int:
        """The newest timestamp to read: `behind` microseconds before the journal's clock
        with concurrent writers; every one in commit order."""
        if self._clock is None:
            return MAX_TIMESTAMP
        return await self._clock.current_timestamp() - behind

    async def _live(
        self,
        journal: HasLivePath,
        send: trio.MemorySendChannel[Batch],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        with journal.live.subscribe(
            self.entity_type, self.slices, capacity=self.settings.live_buffer
        ) as subscription:
            task_status.started()
            while True:
                batch = await subscription.receive_batch()
                # Eagerly: its next receive is a schedule point anyway.
                await send_eagerly(send, (batch, EnvelopeSource.LIVE))


class LocalJournalSources:
    """A journal as a `SourceProvider`: a `LocalJournalSource` per projection instance."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def source(
        self, entity_type: str, slices: SliceRange, settings: SourceSettings
    ) -> LocalJournalSource:
        """See `SourceProvider.source`."""
        return LocalJournalSource(self.journal, entity_type, slices, settings)


def _microseconds(seconds: float) -> int:
    return int(seconds * 1_000_000)
