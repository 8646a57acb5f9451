"""Any journal as a projection's source: three paths into one stream of batches.

- query: events-by-slices from the resume offset, catching up and then following commits;
- backtracking: the same query re-run over a span behind the first, without payloads, so an
  event committed late by a concurrent writer is still delivered (its payload is loaded only
  if it is accepted: `fluvial.core.envelope_admission.Load`; SQLite hands out timestamps
  inside its serialized write transaction, so there it finds only duplicates; it matters for
  journals with concurrent writers);
- live: events published in-process right after commit, with no database read, when the
  journal has a live path (`HasLivePath`: SQLite and memory do).

Each path delivers `(records, source)` batches; the offset tracker drops what two paths
both deliver. Only the generic `Journal` protocol is used, so every backend is a source.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.journal.api import HasLivePath, Journal
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection._supervision import open_supervisor
from fluvial.projection.api import Batch


class LocalJournalSource:
    """The events of one entity type and slice range of a journal, by the query, the live
    path and the backtracking query (see the module docstring); a `Source`."""

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
        async with open_supervisor() as supervisor:  # errors come out as themselves
            if self.settings.live and isinstance(self.journal, HasLivePath):
                await supervisor.start(self._live, self.journal, send)
            if self.settings.backtracking_interval is not None:
                supervisor.start_soon(self._backtracking, send, self.settings.backtracking_interval)
            task_status.started()
            await supervisor.run(self._query, send)

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

    async def _query(self, send: trio.MemorySendChannel[Batch]) -> None:
        journal, page_size = self.journal, self.settings.page_size
        while True:
            seen = journal.append_count()
            page = await journal.read_events_by_slices(
                self.entity_type, self.slices, self._query_offset, page_size
            )
            if page:
                offset = self._query_offset
                for record in page:
                    offset = offset.advanced_to(record)
                self._query_offset = offset
                await send.send((page, EnvelopeSource.QUERY))
            if len(page) < page_size:
                await journal.wait_for_new_events(seen)

    async def _backtracking(self, send: trio.MemorySendChannel[Batch], interval: float) -> None:
        span = int(self.settings.backtracking_span * 1_000_000)
        while True:
            await trio.sleep(interval)
            until = self._query_offset.timestamp
            after = TimestampOffset(max(0, until - span))
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
                await send.send((batch, EnvelopeSource.LIVE))


class LocalJournalSources:
    """A journal as a `SourceProvider`: a `LocalJournalSource` per projection instance."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def source(
        self, entity_type: str, slices: SliceRange, settings: SourceSettings
    ) -> LocalJournalSource:
        """See `SourceProvider.source`."""
        return LocalJournalSource(self.journal, entity_type, slices, settings)
