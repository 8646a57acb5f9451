"""The contract every Journal + SnapshotStore implementation passes (SQLite, memory, PostgreSQL).

Use it by subclassing `JournalContract` in a test module, in a class whose name starts with
``Test``, and giving that class a ``journal`` fixture that yields an open, empty journal::

    pytest.register_assert_rewrite("fluvial.testing.journal_contract")
    from fluvial.testing.journal_contract import JournalContract, JournalUnderTest

    class TestMyJournal(JournalContract):
        @pytest.fixture
        async def journal(self) -> AsyncIterator[JournalUnderTest]:
            async with open_my_journal() as journal:
                yield journal

pytest then collects every contract test for that journal. The tests need pytest-trio in
``trio_mode``. Registering the module for assertion rewriting (before importing it) makes
pytest show the compared values when a contract test fails.

What the contract promises users: appends are atomic and never overwrite (a taken seq nr raises
`JournalConflict` and stores nothing of its batch), never leave a gap (a first seq nr beyond the
entity's highest stored + 1 raises `JournalGap` and stores nothing), reads return exactly what
was stored, the events-by-slices queries return one entity type and slice range in timestamp
order, and resuming from any offset yields exactly the events not seen yet, then follows new
ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Protocol

import pytest
import trio
import trio.testing

from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_SEQ_NR, EventRecord, InvalidAppend, SnapshotRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import Journal, JournalConflict, JournalGap, SnapshotStore
from fluvial.journal.queries import (
    current_events_by_slices,
    events_by_persistence_id,
    events_by_slices,
)

__all__ = [
    "JournalContract",
    "JournalUnderTest",
    "current_by_slices",
    "entity_ids",
    "event",
    "events",
    "read_all",
    "snapshot",
    "timestamp_order",
]

# A bug in a follower or a writer must fail its test, not hang the suite.
_TIMEOUT = 10.0

ENTITY_TYPE = "ContractA"
OTHER_ENTITY_TYPE = "ContractB"
LOW = SliceRange(0, 511)
HIGH = SliceRange(512, 1023)


class JournalUnderTest(Journal, SnapshotStore, Protocol):
    """One object that is both the journal and its snapshot store, as the contract tests it."""


def entity_ids(entity_type: str, slices: SliceRange, count: int) -> list[PersistenceId]:
    """`count` persistence ids of `entity_type` whose slices are in `slices` (deterministic)."""
    found: list[PersistenceId] = []
    n = 0
    while len(found) < count:
        pid = PersistenceId(entity_type, f"entity-{n}")
        n += 1
        if pid.slice in slices:
            found.append(pid)
    return found


def event(
    pid: PersistenceId,
    seq_nr: int,
    *,
    tags: frozenset[str] = frozenset(),
    metadata: bytes = b"",
    data: bytes | None = None,
) -> EventRecord:
    """An event record as an entity would hand it to `Journal.append` (no timestamp)."""
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=SerializedPayload(
            "contract.Event", 1, f"{pid}#{seq_nr}".encode() if data is None else data
        ),
        tags=tags,
        metadata=metadata,
    )


def events(pid: PersistenceId, first_seq_nr: int, count: int) -> list[EventRecord]:
    """A batch of `count` consecutive events of `pid` from `first_seq_nr`."""
    return [event(pid, seq_nr) for seq_nr in range(first_seq_nr, first_seq_nr + count)]


def snapshot(pid: PersistenceId, seq_nr: int) -> SnapshotRecord:
    """A snapshot record of `pid` at `seq_nr`, as an entity would hand it to `save_snapshot`."""
    return SnapshotRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=SerializedPayload("contract.State", 2, f"state of {pid} at {seq_nr}".encode()),
    )


def without_timestamp(records: Sequence[EventRecord]) -> list[EventRecord]:
    """`records` as they were before the journal stamped them."""
    return [
        EventRecord(
            persistence_id=r.persistence_id,
            seq_nr=r.seq_nr,
            entity_type=r.entity_type,
            slice=r.slice,
            payload=r.payload,
            tags=r.tags,
            metadata=r.metadata,
        )
        for r in records
    ]


def timestamp_order(records: Sequence[EventRecord]) -> list[EventRecord]:
    """`records` in the order an events-by-slices query returns them."""
    return sorted(records, key=lambda r: (r.timestamp, r.persistence_id, r.seq_nr))


async def snapshot_seq_nr(
    snapshots: SnapshotStore, pid: PersistenceId, max_seq_nr: int
) -> int | None:
    """The seq nr of the snapshot `load_snapshot(pid, max_seq_nr)` returns, None if none."""
    loaded = await snapshots.load_snapshot(str(pid), max_seq_nr)
    return None if loaded is None else loaded.seq_nr


async def read_all(journal: Journal, pid: PersistenceId) -> list[EventRecord]:
    """Every stored event of `pid`, bounded in time so that a looping query fails."""
    with trio.fail_after(_TIMEOUT):
        return [record async for record in events_by_persistence_id(journal, str(pid))]


async def current_by_slices(
    journal: Journal,
    entity_type: str,
    slices: SliceRange,
    offset: TimestampOffset | None = None,
    *,
    page_size: int = 1000,
) -> list[EventRecord]:
    """The events a consumer would read now, bounded in time so that a looping query fails."""
    with trio.fail_after(_TIMEOUT):
        return [
            record
            async for record in current_events_by_slices(
                journal, entity_type, slices, offset, page_size=page_size
            )
        ]


class JournalContract:
    """The contract tests. Subclass in a ``Test*`` class that defines a ``journal`` fixture."""

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

    async def test_tags_metadata_and_payload_round_trip(self, journal: JournalUnderTest) -> None:
        pid = PersistenceId(ENTITY_TYPE, "ünïcode|id with | bars")
        batch = [
            event(
                pid,
                1,
                tags=frozenset({"red", "blue", "car/ford", "ünïcode", ""}),
                metadata=b"\x00\x01origin-replica\xff",
                data=bytes(range(256)),
            ),
            event(pid, 2),  # no tags, no metadata
            EventRecord(
                persistence_id=str(pid),
                seq_nr=3,
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

        with trio.fail_after(_TIMEOUT):
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

        with trio.fail_after(_TIMEOUT):
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

        with trio.fail_after(_TIMEOUT):
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

    async def _append_mixed(self, journal: JournalUnderTest) -> list[EventRecord]:
        """Events of two entity types in both halves of the slices, interleaved."""
        pids = [
            *entity_ids(ENTITY_TYPE, LOW, 3),
            *entity_ids(ENTITY_TYPE, HIGH, 2),
            *entity_ids(OTHER_ENTITY_TYPE, LOW, 2),
        ]
        stored: list[EventRecord] = []
        for round_ in range(3):
            for index, pid in enumerate(pids):
                count = 1 + (index + round_) % 2
                first = await journal.highest_seq_nr(str(pid)) + 1
                stored += await journal.append(events(pid, first, count))
        return stored

    async def test_events_by_slices_returns_one_entity_type_and_slice_range_in_timestamp_order(
        self, journal: JournalUnderTest
    ) -> None:
        stored = await self._append_mixed(journal)

        for entity_type, slices in [
            (ENTITY_TYPE, LOW),
            (ENTITY_TYPE, HIGH),
            (ENTITY_TYPE, SliceRange.all()),
            (OTHER_ENTITY_TYPE, LOW),
            (OTHER_ENTITY_TYPE, HIGH),
        ]:
            expected = timestamp_order(
                [r for r in stored if r.entity_type == entity_type and r.slice in slices]
            )
            assert await current_by_slices(journal, entity_type, slices) == expected
            assert await current_by_slices(journal, entity_type, slices, page_size=2) == expected
            raw = await journal.read_events_by_slices(
                entity_type, slices, TimestampOffset.start(), 1000
            )
            assert raw == expected
        assert await current_by_slices(journal, "NoSuchType", SliceRange.all()) == []

        # The slices asked for bound the result exactly, however narrow the range.
        one = stored[0]
        assert await current_by_slices(
            journal, one.entity_type, SliceRange(one.slice, one.slice)
        ) == timestamp_order(
            [r for r in stored if r.entity_type == one.entity_type and r.slice == one.slice]
        )

    async def test_read_events_by_slices_honours_limit(self, journal: JournalUnderTest) -> None:
        stored = await self._append_mixed(journal)
        expected = timestamp_order([r for r in stored if r.entity_type == ENTITY_TYPE])
        start = TimestampOffset.start()
        for limit in (1, 3, len(expected)):
            page = await journal.read_events_by_slices(ENTITY_TYPE, SliceRange.all(), start, limit)
            assert page == expected[:limit]

    @pytest.mark.parametrize("page_size", [1, 2, 1000])
    async def test_resuming_from_any_offset_yields_exactly_the_rest(
        self, journal: JournalUnderTest, page_size: int
    ) -> None:
        await self._append_mixed(journal)
        everything = await current_by_slices(journal, ENTITY_TYPE, LOW)
        assert len(everything) > 5

        offset = TimestampOffset.start()
        for seen in range(len(everything) + 1):
            rest = await current_by_slices(journal, ENTITY_TYPE, LOW, offset, page_size=page_size)
            assert rest == everything[seen:], f"resuming after {seen} events"
            if seen < len(everything):
                offset = offset.advanced_to(everything[seen])

    async def test_offset_seen_pairs_exclude_exactly_the_events_seen_at_its_timestamp(
        self, journal: JournalUnderTest
    ) -> None:
        await self._append_mixed(journal)
        everything = await current_by_slices(journal, ENTITY_TYPE, SliceRange.all())
        middle = everything[len(everything) // 2]
        later = [r for r in everything if r.timestamp > middle.timestamp]
        at_middle = [r for r in everything if r.timestamp == middle.timestamp]
        others_at_middle = [r for r in at_middle if r != middle]

        def unseen(offset: TimestampOffset) -> list[EventRecord]:
            return [r for r in everything if offset.is_behind(r)]

        offsets = [
            # Nothing seen at that timestamp yet: the events at it are still to come.
            TimestampOffset(middle.timestamp),
            # Exactly `middle` seen at that timestamp.
            TimestampOffset(middle.timestamp, {middle.persistence_id: middle.seq_nr}),
            # An earlier seq nr of the same entity seen: `middle` is still to come.
            TimestampOffset(middle.timestamp, {middle.persistence_id: middle.seq_nr - 1}),
            # Many pairs, most of entities the query does not return at all.
            TimestampOffset(
                middle.timestamp,
                {
                    middle.persistence_id: middle.seq_nr,
                    **{f"{OTHER_ENTITY_TYPE}|x{n}": 1 for n in range(20)},
                },
            ),
        ]
        for offset in offsets:
            expected = unseen(offset)
            for page_size in (1, 1000):
                rest = await current_by_slices(
                    journal, ENTITY_TYPE, SliceRange.all(), offset, page_size=page_size
                )
                assert rest == expected, offset
        assert unseen(offsets[0]) == [*at_middle, *later]
        assert unseen(offsets[1]) == [*others_at_middle, *later]

    async def test_events_by_slices_catches_up_then_follows_new_appends(
        self, journal: JournalUnderTest
    ) -> None:
        low, low_later = entity_ids(ENTITY_TYPE, LOW, 2)
        (high,) = entity_ids(ENTITY_TYPE, HIGH, 1)
        (other,) = entity_ids(OTHER_ENTITY_TYPE, LOW, 1)
        before = [
            *await journal.append(events(low, 1, 2)),
            *await journal.append(events(high, 1, 1)),
        ]
        before += await journal.append(events(other, 1, 1))
        before += await journal.append(events(low, 3, 1))
        wanted_before = [r for r in before if r.entity_type == ENTITY_TYPE and r.slice in LOW]

        send, receive = trio.open_memory_channel[EventRecord](math.inf)

        async def follow() -> None:
            query = events_by_slices(journal, ENTITY_TYPE, LOW, page_size=2)
            async with contextlib.aclosing(query) as stream:
                async for record in stream:
                    await send.send(record)

        async def take(count: int) -> list[EventRecord]:
            return [await receive.receive() for _ in range(count)]

        with trio.fail_after(_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                assert await take(len(wanted_before)) == wanted_before
                # Let the follower reach its wait for new events, then append.
                await trio.testing.wait_all_tasks_blocked()
                await journal.append(events(high, 2, 2))
                await journal.append(events(other, 2, 1))
                live = [*await journal.append(events(low_later, 1, 3))]
                live += await journal.append(events(low, 4, 1))
                assert await take(len(live)) == live
                # Nothing else arrived in between: the next event is the next one appended.
                await trio.testing.wait_all_tasks_blocked()
                marker = await journal.append(events(low_later, 4, 1))
                assert await take(1) == list(marker)
                nursery.cancel_scope.cancel()

    async def test_events_by_slices_resumes_from_an_offset_then_follows(
        self, journal: JournalUnderTest
    ) -> None:
        await self._append_mixed(journal)
        everything = await current_by_slices(journal, ENTITY_TYPE, LOW)
        offset = TimestampOffset.start()
        for record in everything[:3]:
            offset = offset.advanced_to(record)

        with trio.fail_after(_TIMEOUT):
            query = events_by_slices(journal, ENTITY_TYPE, LOW, offset, page_size=2)
            async with contextlib.aclosing(query) as stream:
                rest = [await anext(stream) for _ in everything[3:]]
                assert rest == everything[3:]
                pid = PersistenceId.parse(everything[0].persistence_id)
                new = await journal.append(
                    events(pid, await journal.highest_seq_nr(str(pid)) + 1, 1)
                )
                assert await anext(stream) == new[0]

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
