"""The local journal as a projection's source: three paths into one stream of batches.

- query: events-by-slices from the resume offset, catching up and then following commits;
- backtracking: the same query re-run over a span behind the first, so an event committed
  late by a concurrent writer is still delivered (SQLite hands out timestamps inside its
  serialized write transaction, so there it finds only duplicates; it matters for journals
  with concurrent writers);
- live: events published in-process right after commit, with no database read.

Each path delivers `(records, source)` batches; the offset tracker drops what two paths
both deliver.
"""

from __future__ import annotations

import trio

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource
from fluvial.core.offsets import TimestampOffset
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection._supervision import open_supervisor
from fluvial.projection.api import Batch


class LocalJournalSource:
    """The events of one entity type and slice range of the local journal, by the query, the
    live path and the backtracking query (see the module docstring)."""

    def __init__(
        self,
        journal: SqliteJournal,
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
        """Feed `send` from `offset` on, until cancelled; a read error ends it, raised as
        itself."""
        self._query_offset = offset
        async with open_supervisor() as supervisor:  # errors come out as themselves
            if self.settings.live:
                await supervisor.start(self._live, send)
            if self.settings.backtracking_interval is not None:
                supervisor.start_soon(self._backtracking, send, self.settings.backtracking_interval)
            task_status.started()
            await supervisor.run(self._query, send)

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
            while True:
                page = await self.journal.read_events_by_slices(
                    self.entity_type, self.slices, after, self.settings.page_size
                )
                page = [r for r in page if r.timestamp <= until]
                if not page:
                    break
                await send.send((page, EnvelopeSource.BACKTRACKING))
                for record in page:
                    after = after.advanced_to(record)

    async def _live(
        self, send: trio.MemorySendChannel[Batch], *, task_status: trio.TaskStatus[None]
    ) -> None:
        with self.journal.live.subscribe(
            self.entity_type, self.slices, capacity=self.settings.live_buffer
        ) as subscription:
            task_status.started()
            while True:
                batch = await subscription.receive_batch()
                await send.send((batch, EnvelopeSource.LIVE))
