"""The contract of the snapshot store: the newest at or below a seq nr, replaced at its seq nr,
retention per entity."""

from __future__ import annotations

from fluvial.core.ids import SliceRange
from fluvial.core.records import SnapshotRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.testing.journal_contract._records import (
    ENTITY_TYPE,
    JournalUnderTest,
    entity_ids,
    snapshot,
    snapshot_seq_nr,
)


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
