"""The contract of the snapshot store: the newest at or below a seq nr, replaced at its seq nr,
retention per entity."""

from __future__ import annotations

import msgspec
import pytest
import trio

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord, SnapshotRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.queries import current_snapshots_by_slices, offset_after_snapshot
from fluvial.testing.journal_contract._records import (
    ENTITY_TYPE,
    HIGH,
    LOW,
    OTHER_ENTITY_TYPE,
    TIMEOUT,
    JournalUnderTest,
    entity_ids,
    event,
    events,
    snapshot,
    snapshot_seq_nr,
)


async def snapshots_by_slices(
    journal: JournalUnderTest,
    entity_type: str,
    slices: SliceRange,
    offset: TimestampOffset | None = None,
    *,
    page_size: int = 1000,
) -> list[SnapshotRecord]:
    """The snapshots a stream would start from now, bounded in time."""
    with trio.fail_after(TIMEOUT):
        query = current_snapshots_by_slices(
            journal, entity_type, slices, offset, page_size=page_size
        )
        return [s async for s in query]


class SnapshotContract:
    """Saving, loading and retention of snapshots."""

    async def test_snapshot_of_unknown_entity_is_none(self, journal: JournalUnderTest) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        assert await journal.load_snapshot(str(pid)) is None

    async def test_load_snapshot_returns_the_newest_at_or_below_max_seq_nr(
        self, journal: JournalUnderTest
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        for seq_nr in (10, 5, 15):
            await journal.save_snapshot(snapshot(pid, seq_nr), keep=5)
        await journal.save_snapshot(snapshot(other, 20), keep=5)

        async def load(max_seq_nr: int | None = None) -> int | None:
            if max_seq_nr is None:
                loaded = await journal.load_snapshot(str(pid))
            else:
                loaded = await journal.load_snapshot(str(pid), max_seq_nr)
            if loaded is None:
                return None
            assert loaded.persistence_id == str(pid)
            assert (loaded.entity_type, loaded.slice) == (pid.entity_type, pid.slice)
            assert loaded.payload == snapshot(pid, loaded.seq_nr).payload
            return loaded.seq_nr

        assert await load() == 15
        assert await load(15) == 15
        assert await load(14) == 10
        assert await load(10) == 10
        assert await load(9) == 5
        assert await load(4) is None

    async def test_saving_a_snapshot_again_at_its_seq_nr_replaces_it(
        self, journal: JournalUnderTest
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        await journal.save_snapshot(snapshot(pid, 3), keep=2)
        newer = SnapshotRecord(
            persistence_id=str(pid),
            seq_nr=3,
            entity_type=pid.entity_type,
            slice=pid.slice,
            payload=SerializedPayload("contract.State", 3, b"replaced"),
        )
        await journal.save_snapshot(newer, keep=2)
        loaded = await journal.load_snapshot(str(pid))
        assert loaded is not None
        assert loaded.payload == newer.payload

    async def test_snapshot_retention_keeps_only_the_newest(
        self, journal: JournalUnderTest
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        for seq_nr in (1, 2, 3):
            await journal.save_snapshot(snapshot(other, seq_nr), keep=5)
        for seq_nr in range(1, 7):
            await journal.save_snapshot(snapshot(pid, seq_nr), keep=2)

        assert [await snapshot_seq_nr(journal, pid, n) for n in range(1, 8)] == [
            *[None] * 4,
            5,
            6,
            6,
        ]
        # A snapshot older than the kept ones is not among the newest, so it is not kept.
        await journal.save_snapshot(snapshot(pid, 3), keep=2)
        assert await snapshot_seq_nr(journal, pid, 4) is None
        assert await snapshot_seq_nr(journal, pid, 6) == 6
        # Another entity's snapshots are not touched by this one's retention.
        assert [await snapshot_seq_nr(journal, other, n) for n in (1, 2, 3)] == [1, 2, 3]

    async def test_a_snapshot_keeps_the_timestamp_and_tags_of_its_event(
        self, journal: JournalUnderTest
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        stored = [
            *await journal.append(events(pid, 1, 1)),
            *await journal.append([event(pid, 2, tags=frozenset({"vip", "eu"}))]),
        ]
        # Whatever the record says, the store takes them from the event it holds.
        given = msgspec.structs.replace(snapshot(pid, 2), event_timestamp=1, tags=frozenset("x"))
        await journal.save_snapshot(given, keep=2)
        await journal.save_snapshot(snapshot(pid, 1), keep=2)
        at_2 = await journal.load_snapshot(str(pid))
        at_1 = await journal.load_snapshot(str(pid), 1)
        assert at_2 is not None and at_1 is not None
        assert (at_2.event_timestamp, at_2.tags) == (stored[1].timestamp, stored[1].tags)
        assert (at_1.event_timestamp, at_1.tags) == (stored[0].timestamp, frozenset())
        assert at_2.payload == given.payload
        # A snapshot of an event the journal does not hold keeps what its record gives.
        unheld = msgspec.structs.replace(
            snapshot(other, 4), event_timestamp=123, tags=frozenset({"t"})
        )
        await journal.save_snapshot(unheld, keep=1)
        loaded = await journal.load_snapshot(str(other))
        assert loaded is not None
        assert (loaded.event_timestamp, loaded.tags) == (123, frozenset({"t"}))

    async def _snapshot_entities(
        self, journal: JournalUnderTest
    ) -> tuple[list[SnapshotRecord], list[EventRecord]]:
        """Entities of both types and halves of the slices with events, and snapshots of
        most of them (two of some); the newest snapshot of each, in event-timestamp order."""
        pids = [
            *entity_ids(ENTITY_TYPE, LOW, 4),
            *entity_ids(ENTITY_TYPE, HIGH, 3),
            *entity_ids(OTHER_ENTITY_TYPE, LOW, 2),
        ]
        stored: list[EventRecord] = []
        for first in (1, 3, 5):
            for pid in pids:
                stored += await journal.append(events(pid, first, 2))
        # Saved out of event order; the last pid has no snapshot at all.
        for index, pid in reversed(list(enumerate(pids[:-1]))):
            await journal.save_snapshot(snapshot(pid, 1 + index % 6), keep=3)
            if index % 3 == 0:
                await journal.save_snapshot(snapshot(pid, 6), keep=3)
        newest = [await journal.load_snapshot(str(pid)) for pid in pids[:-1]]
        return sorted(
            (s for s in newest if s is not None),
            key=lambda s: (s.event_timestamp, s.persistence_id),
        ), stored

    async def test_snapshots_by_slices_give_each_entitys_newest_in_event_order(
        self, journal: JournalUnderTest
    ) -> None:
        newest, stored = await self._snapshot_entities(journal)
        timestamps = {(r.persistence_id, r.seq_nr): r.timestamp for r in stored}
        assert all(timestamps[s.persistence_id, s.seq_nr] == s.event_timestamp for s in newest)
        for entity_type, slices in [
            (ENTITY_TYPE, SliceRange.all()),
            (ENTITY_TYPE, LOW),
            (ENTITY_TYPE, HIGH),
            (OTHER_ENTITY_TYPE, SliceRange.all()),
        ]:
            expected = [s for s in newest if s.entity_type == entity_type and s.slice in slices]
            assert expected
            for page_size in (1, 2, 1000):
                got = await snapshots_by_slices(journal, entity_type, slices, page_size=page_size)
                assert got == expected
        assert await snapshots_by_slices(journal, "NoSuchType", SliceRange.all()) == []

    @pytest.mark.parametrize("page_size", [1, 1000])
    async def test_snapshots_by_slices_resume_from_any_offset(
        self, journal: JournalUnderTest, page_size: int
    ) -> None:
        await self._snapshot_entities(journal)
        everything = await snapshots_by_slices(journal, ENTITY_TYPE, SliceRange.all())
        offset = TimestampOffset.start()
        for seen in range(len(everything) + 1):
            rest = await snapshots_by_slices(
                journal, ENTITY_TYPE, SliceRange.all(), offset, page_size=page_size
            )
            assert rest == everything[seen:], f"resuming after {seen} snapshots"
            if seen < len(everything):
                offset = offset_after_snapshot(offset, everything[seen])
        # An offset of the events stream serves too: after an event, its entity's snapshot
        # at that event is seen, the later ones are not.
        first = everything[0]
        after_event = TimestampOffset(first.event_timestamp, {first.persistence_id: first.seq_nr})
        assert (
            await snapshots_by_slices(journal, ENTITY_TYPE, SliceRange.all(), after_event)
            == everything[1:]
        )
