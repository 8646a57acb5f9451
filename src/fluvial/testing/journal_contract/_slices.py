"""The contract of the events-by-slices queries: one entity type and slice range, in timestamp
order, resumable from any offset, then following new events."""

from __future__ import annotations

import contextlib
import math

import pytest
import trio
import trio.testing

from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.journal.queries import events_by_slices
from fluvial.testing.journal_contract._records import (
    ENTITY_TYPE,
    HIGH,
    LOW,
    OTHER_ENTITY_TYPE,
    TIMEOUT,
    JournalUnderTest,
    current_by_slices,
    entity_ids,
    events,
    timestamp_order,
)


class SliceQueryContract:
    """Catch-up and follow by slices, from any offset."""

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

        with trio.fail_after(TIMEOUT):
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

        with trio.fail_after(TIMEOUT):
            query = events_by_slices(journal, ENTITY_TYPE, LOW, offset, page_size=2)
            async with contextlib.aclosing(query) as stream:
                rest = [await anext(stream) for _ in everything[3:]]
                assert rest == everything[3:]
                pid = PersistenceId.parse(everything[0].persistence_id)
                new = await journal.append(
                    events(pid, await journal.highest_seq_nr(str(pid)) + 1, 1)
                )
                assert await anext(stream) == new[0]
