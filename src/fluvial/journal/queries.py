"""Queries every journal supports, built once on the `Journal` primitives."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.journal.api import MAX_SEQ_NR, Journal

PAGE_SIZE = 1000


async def events_by_persistence_id(
    journal: Journal,
    persistence_id: str,
    from_seq_nr: int = 1,
    to_seq_nr: int = MAX_SEQ_NR,
    *,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[EventRecord, None]:
    """The stored events of one entity in seq nr order, read a page at a time."""
    next_seq_nr = from_seq_nr
    while next_seq_nr <= to_seq_nr:
        page = await journal.read_events(persistence_id, next_seq_nr, to_seq_nr, page_size)
        for record in page:
            yield record
        if len(page) < page_size:
            return
        next_seq_nr = page[-1].seq_nr + 1


async def current_events_by_slices(
    journal: Journal,
    entity_type: str,
    slices: SliceRange,
    offset: TimestampOffset | None = None,
    *,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[EventRecord, None]:
    """The events stored now, after `offset`, in timestamp order; ends when caught up."""
    offset = offset or TimestampOffset.start()
    while True:
        page = await journal.read_events_by_slices(entity_type, slices, offset, page_size)
        for record in page:
            offset = offset.advanced_to(record)
            yield record
        if len(page) < page_size:
            return


async def events_by_slices(
    journal: Journal,
    entity_type: str,
    slices: SliceRange,
    offset: TimestampOffset | None = None,
    *,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[EventRecord, None]:
    """Catch up from `offset`, then follow new events forever, in timestamp order.

    Close the iterator (or cancel its task) to stop following.
    """
    offset = offset or TimestampOffset.start()
    while True:
        # Taken before the read, so a commit that lands during it is not waited for.
        seen = journal.append_count()
        page = await journal.read_events_by_slices(entity_type, slices, offset, page_size)
        for record in page:
            offset = offset.advanced_to(record)
            yield record
        if len(page) < page_size:
            await journal.wait_for_new_events(seen)
