"""Queries every journal supports, built once on the `Journal` primitives."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord, SnapshotRecord
from fluvial.journal.api import MAX_SEQ_NR, MAX_TIMESTAMP, Journal, SnapshotStore

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
    to_timestamp: int = MAX_TIMESTAMP,
    with_payloads: bool = True,
    exclude_origin: str | None = None,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[EventRecord, None]:
    """The events stored now, after `offset` and up to `to_timestamp` (inclusive), in
    timestamp order; ends when caught up. See `Journal.read_events_by_slices` for
    `with_payloads` and `exclude_origin`."""
    offset = offset or TimestampOffset.start()
    while True:
        page = await journal.read_events_by_slices(
            entity_type,
            slices,
            offset,
            page_size,
            to_timestamp=to_timestamp,
            with_payloads=with_payloads,
            exclude_origin=exclude_origin,
        )
        for record in page:
            offset = offset.advanced_to(record)
            yield record
        if len(page) < page_size:
            return


async def current_snapshots_by_slices(
    snapshots: SnapshotStore,
    entity_type: str,
    slices: SliceRange,
    offset: TimestampOffset | None = None,
    *,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[SnapshotRecord, None]:
    """The newest snapshot of each entity of `entity_type` in `slices` stored now, after
    `offset`, in the order of their events' timestamps; ends when caught up.

    A stream that starts from snapshots reads these, then each entity's events after its
    snapshot's seq nr; the offset after a snapshot is `offset_after_snapshot`.
    """
    offset = offset or TimestampOffset.start()
    while True:
        page = await snapshots.read_snapshots_by_slices(entity_type, slices, offset, page_size)
        for snapshot in page:
            offset = offset_after_snapshot(offset, snapshot)
            yield snapshot
        if len(page) < page_size:
            return


def by_slices_parameters(
    entity_type: str,
    slices: SliceRange,
    after: TimestampOffset,
    limit: int,
    to_timestamp: int,
    exclude_origin: str | None,
) -> dict[str, object]:
    """The named parameters of a journal's events-by-slices statement (SQLite's and
    PostgreSQL's take the same ones)."""
    return {
        "entity_type": entity_type,
        "from": after.timestamp,
        "to": to_timestamp,
        "min": slices.min,
        "max": slices.max,
        # Records seen at exactly `after.timestamp` are read again and dropped by the journal,
        # so ask for that many more to still return up to `limit` new ones.
        "limit": limit + len(after.seen),
        "origin": exclude_origin,
    }


def snapshot_is_behind(offset: TimestampOffset, snapshot: SnapshotRecord) -> bool:
    """Whether `snapshot` comes after `offset`, standing in the place of its event (at
    `event_timestamp`, as the event's seq nr): `TimestampOffset.is_behind` for snapshots."""
    if snapshot.event_timestamp != offset.timestamp:
        return snapshot.event_timestamp > offset.timestamp
    return offset.seen.get(snapshot.persistence_id, 0) < snapshot.seq_nr


def offset_after_snapshot(offset: TimestampOffset, snapshot: SnapshotRecord) -> TimestampOffset:
    """`offset` after seeing `snapshot` in its event's place (`TimestampOffset.advanced_to`
    for snapshots, which come in the order of their events' timestamps)."""
    if snapshot.event_timestamp == offset.timestamp:
        return TimestampOffset(
            offset.timestamp, {**offset.seen, snapshot.persistence_id: snapshot.seq_nr}
        )
    return TimestampOffset(snapshot.event_timestamp, {snapshot.persistence_id: snapshot.seq_nr})


async def events_by_slices(
    journal: Journal,
    entity_type: str,
    slices: SliceRange,
    offset: TimestampOffset | None = None,
    *,
    with_payloads: bool = True,
    exclude_origin: str | None = None,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[EventRecord, None]:
    """Catch up from `offset`, then follow new events forever, in timestamp order. See
    `Journal.read_events_by_slices` for `with_payloads` and `exclude_origin`.

    Close the iterator (or cancel its task) to stop following.
    """
    offset = offset or TimestampOffset.start()
    while True:
        # Taken before the read, so a commit that lands during it is not waited for.
        seen = journal.append_count()
        page = await journal.read_events_by_slices(
            entity_type,
            slices,
            offset,
            page_size,
            with_payloads=with_payloads,
            exclude_origin=exclude_origin,
        )
        for record in page:
            offset = offset.advanced_to(record)
            yield record
        if len(page) < page_size:
            await journal.wait_for_new_events(seen)
