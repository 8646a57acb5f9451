"""The contract of appends and reads by persistence id: atomic, never overwriting, never
leaving a gap."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.records import MAX_SEQ_NR, EventRecord, InvalidAppend
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import JournalConflict, JournalGap
from fluvial.journal.queries import events_by_persistence_id
from fluvial.testing.journal_contract._records import (
    ENTITY_TYPE,
    OTHER_ENTITY_TYPE,
    TIMEOUT,
    JournalUnderTest,
    current_by_slices,
    entity_ids,
    event,
    events,
    read_all,
    timestamp_order,
    without_timestamp,
)


class AppendContract:
    """Appends, conflicts, gaps, invalid appends and reads of one entity."""

    async def test_unknown_entity_has_no_events(self, journal: JournalUnderTest) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        assert await journal.highest_seq_nr(str(pid)) == 0
        assert await journal.read_events(str(pid), 1, 2**63 - 1, 100) == []
        assert await read_all(journal, pid) == []

    async def test_append_assigns_timestamps_and_reads_back_what_it_returned(
        self, journal: JournalUnderTest
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        batch = events(pid, 1, 3)
        stored = list(await journal.append(batch))
        assert without_timestamp(stored) == batch
        assert all(r.timestamp > 0 for r in stored)
        assert await read_all(journal, pid) == stored
        assert await journal.highest_seq_nr(str(pid)) == 3

    async def test_timestamps_strictly_increase_in_append_order(
        self, journal: JournalUnderTest
    ) -> None:
        pids = entity_ids(ENTITY_TYPE, SliceRange.all(), 3) + entity_ids(
            OTHER_ENTITY_TYPE, SliceRange.all(), 2
        )
        appended: list[EventRecord] = []
        for round_ in range(3):
            for pid in pids:
                appended += await journal.append(events(pid, 2 * round_ + 1, 2))
        timestamps = [r.timestamp for r in appended]
        assert timestamps == sorted(set(timestamps)), "not strictly increasing"
        for pid in pids:
            assert await read_all(journal, pid) == [
                r for r in appended if r.persistence_id == str(pid)
            ]

    async def test_tags_replication_metadata_and_payload_round_trip(
        self, journal: JournalUnderTest
    ) -> None:
        pid = PersistenceId(ENTITY_TYPE, "ünïcode|id with | bars")
        vector = VersionVector.of({"eu-west": 3, "üs-east": 1, "edge-7": 12})
        batch = [
            event(
                pid,
                1,
                tags=frozenset({"red", "blue", "car/ford", "ünïcode", ""}),
                replication=ReplicationMetadata("eu-west", 3, vector),
                data=bytes(range(256)),
            ),
            event(pid, 2),  # no tags, not replicated
            event(pid, 3, replication=ReplicationMetadata("edge-7", 1), write_timestamp=17),
            EventRecord(
                persistence_id=str(pid),
                seq_nr=4,
                entity_type=pid.entity_type,
                slice=pid.slice,
                payload=SerializedPayload("contract.Other/v7", 7, b""),
                tags=frozenset({"only"}),
            ),
        ]
        stored = await journal.append(batch)
        read = await read_all(journal, pid)
        assert without_timestamp(read) == batch
        assert read == list(stored)
        assert read[0].replication == ReplicationMetadata("eu-west", 3, vector)
        assert [r.write_timestamp for r in read] == [
            read[0].timestamp,
            read[1].timestamp,
            17,
            read[3].timestamp,
        ]
        by_slice = await current_by_slices(journal, ENTITY_TYPE, SliceRange(pid.slice, pid.slice))
        assert by_slice == list(stored)

    async def test_read_events_range_and_limit(self, journal: JournalUnderTest) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        stored: list[EventRecord] = []
        for first in (1, 4, 7):
            stored += await journal.append(events(pid, first, 3))
            await journal.append(events(other, first, 3))
        by_seq_nr = {r.seq_nr: r for r in stored}
        pid_s = str(pid)
        assert await journal.read_events(pid_s, 3, 7, 100) == [by_seq_nr[n] for n in range(3, 8)]
        assert await journal.read_events(pid_s, 3, 7, 2) == [by_seq_nr[3], by_seq_nr[4]]
        assert await journal.read_events(pid_s, 5, 5, 10) == [by_seq_nr[5]]
        assert await journal.read_events(pid_s, 9, 2**63 - 1, 10) == [by_seq_nr[9]]
        assert await journal.read_events(pid_s, 10, 20, 10) == []
        assert await journal.read_events(pid_s, 7, 3, 10) == []
        assert await journal.highest_seq_nr(pid_s) == 9
        assert await journal.highest_seq_nr(str(other)) == 9

    @pytest.mark.parametrize("page_size", [1, 4, 5, 1000])
    async def test_events_by_persistence_id_pages_through_everything(
        self, journal: JournalUnderTest, page_size: int
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        stored: list[EventRecord] = []
        for first in range(1, 21, 5):
            stored += await journal.append(events(pid, first, 5))
            await journal.append(events(other, first, 5))

        async def read(from_seq_nr: int, to_seq_nr: int = 2**63 - 1) -> list[EventRecord]:
            query = events_by_persistence_id(
                journal, str(pid), from_seq_nr, to_seq_nr, page_size=page_size
            )
            return [record async for record in query]

        assert await read(1) == stored
        assert await read(6, 17) == stored[5:17]
        assert await read(20) == stored[19:]
        assert await read(21) == []

    async def test_conflicting_append_raises_and_stores_nothing_of_its_batch(
        self, journal: JournalUnderTest
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        stored = list(await journal.append(events(pid, 1, 3)))
        await journal.append(events(other, 1, 1))

        for first_seq_nr, count in [(3, 3), (1, 1), (2, 5)]:
            rival = [
                event(pid, seq_nr, data=b"second writer")
                for seq_nr in range(first_seq_nr, first_seq_nr + count)
            ]
            with pytest.raises(JournalConflict) as conflict:
                await journal.append(rival)
            assert conflict.value.persistence_id == str(pid)
            assert await read_all(journal, pid) == stored
            assert await journal.highest_seq_nr(str(pid)) == 3

        assert await current_by_slices(journal, ENTITY_TYPE, SliceRange.all()) == timestamp_order(
            [*stored, *await read_all(journal, other)]
        )
        # The entity carries on from the seq nr that is really stored.
        stored += await journal.append(events(pid, 4, 2))
        assert await read_all(journal, pid) == stored

    async def test_conflict_leaves_concurrent_appends_of_other_entities_alone(
        self, journal: JournalUnderTest
    ) -> None:
        victim, *others = entity_ids(ENTITY_TYPE, SliceRange.all(), 21)
        original = list(await journal.append(events(victim, 1, 2)))
        appended: dict[PersistenceId, Sequence[EventRecord]] = {}
        conflicts: list[JournalConflict] = []

        async def append_other(pid: PersistenceId) -> None:
            appended[pid] = await journal.append(events(pid, 1, 3))

        async def append_conflicting() -> None:
            try:
                await journal.append([event(victim, n, data=b"rival") for n in (2, 3, 4)])
            except JournalConflict as exc:
                conflicts.append(exc)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for pid in others[:10]:
                    nursery.start_soon(append_other, pid)
                nursery.start_soon(append_conflicting)
                for pid in others[10:]:
                    nursery.start_soon(append_other, pid)

        assert len(conflicts) == 1
        assert await read_all(journal, victim) == original
        for pid in others:
            assert without_timestamp(appended[pid]) == events(pid, 1, 3)
            assert await read_all(journal, pid) == list(appended[pid])

    async def test_of_two_concurrent_writers_of_one_seq_nr_exactly_one_wins(
        self, journal: JournalUnderTest
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        await journal.append(events(pid, 1, 2))
        winners: list[Sequence[EventRecord]] = []
        losers: list[str] = []

        async def writer(name: str) -> None:
            batch = [event(pid, n, data=name.encode()) for n in (3, 4)]
            try:
                winners.append(await journal.append(batch))
            except JournalConflict:
                losers.append(name)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, "first")
                nursery.start_soon(writer, "second")

        assert len(winners) == 1
        assert len(losers) == 1
        assert (await read_all(journal, pid))[2:] == list(winners[0])

    @pytest.mark.parametrize(
        "seq_nrs",
        [[1, 3], [2, 1], [1, 1], [0, 1], [-1]],
        ids=["gap", "backwards", "repeated", "zero", "negative"],
    )
    async def test_append_of_non_consecutive_seq_nrs_is_invalid(
        self, journal: JournalUnderTest, seq_nrs: list[int]
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        with pytest.raises(InvalidAppend):
            await journal.append([event(pid, n) for n in seq_nrs])
        assert await journal.highest_seq_nr(str(pid)) == 0
        assert await current_by_slices(journal, ENTITY_TYPE, SliceRange.all()) == []

    async def test_seq_nrs_beyond_max_seq_nr_are_invalid(self, journal: JournalUnderTest) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        for batch in ([event(pid, MAX_SEQ_NR + 1)], events(pid, MAX_SEQ_NR, 2)):
            with pytest.raises(InvalidAppend):
                await journal.append(batch)
        assert await journal.highest_seq_nr(str(pid)) == 0

    async def test_an_append_that_would_leave_a_gap_is_refused_and_stores_nothing(
        self, journal: JournalUnderTest
    ) -> None:
        pid, other, new = entity_ids(ENTITY_TYPE, SliceRange.all(), 3)
        stored = list(await journal.append(events(pid, 1, 2)))
        await journal.append(events(other, 1, 3))

        for first_seq_nr, count in [(4, 1), (5, 2), (2**40, 1)]:
            with pytest.raises(JournalGap) as gap:
                await journal.append(events(pid, first_seq_nr, count))
            assert (gap.value.persistence_id, gap.value.seq_nr) == (str(pid), first_seq_nr)
            assert gap.value.highest_seq_nr == 2
            assert await read_all(journal, pid) == stored
        # An entity with no events starts at seq nr 1, across appends: [5], then [3].
        for first_seq_nr in (5, 3):
            with pytest.raises(JournalGap):
                await journal.append(events(new, first_seq_nr, 1))
        assert await journal.highest_seq_nr(str(new)) == 0
        assert [r.seq_nr for r in await read_all(journal, other)] == [1, 2, 3]
        # The entity carries on from its highest stored seq nr.
        stored += await journal.append(events(pid, 3, 2))
        assert await read_all(journal, pid) == stored
        assert len(await current_by_slices(journal, ENTITY_TYPE, SliceRange.all())) == 7

    async def test_a_gap_among_concurrent_appends_fails_alone(
        self, journal: JournalUnderTest
    ) -> None:
        pid, *others = entity_ids(ENTITY_TYPE, SliceRange.all(), 11)
        await journal.append(events(pid, 1, 2))
        gaps: list[JournalGap] = []

        async def append_gap() -> None:
            try:
                await journal.append(events(pid, 6, 1))
            except JournalGap as exc:
                gaps.append(exc)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for other in others[:5]:
                    nursery.start_soon(journal.append, events(other, 1, 2))
                nursery.start_soon(append_gap)
                # In either order, [3, 4] follows 2 and [6] follows neither 2 nor 4.
                nursery.start_soon(journal.append, events(pid, 3, 2))
                for other in others[5:]:
                    nursery.start_soon(journal.append, events(other, 1, 2))

        assert len(gaps) == 1
        assert [r.seq_nr for r in await read_all(journal, pid)] == [1, 2, 3, 4]
        for other in others:
            assert [r.seq_nr for r in await read_all(journal, other)] == [1, 2]

    async def test_append_of_two_entities_in_one_batch_is_invalid(
        self, journal: JournalUnderTest
    ) -> None:
        first, second = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        with pytest.raises(InvalidAppend):
            await journal.append([event(first, 1), event(second, 2)])
        with pytest.raises(InvalidAppend):
            await journal.append([event(first, 1), event(second, 1)])
        assert await journal.highest_seq_nr(str(first)) == 0
        assert await journal.highest_seq_nr(str(second)) == 0
        assert await current_by_slices(journal, ENTITY_TYPE, SliceRange.all()) == []

    async def test_empty_append_stores_nothing(self, journal: JournalUnderTest) -> None:
        assert list(await journal.append([])) == []
        assert await current_by_slices(journal, ENTITY_TYPE, SliceRange.all()) == []
