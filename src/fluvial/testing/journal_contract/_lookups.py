"""The contract of the reads a consumer or producer makes beside its stream: by slices up to a
timestamp, without payloads or without one origin's payloads, one event by persistence id
and seq nr, and the latest event timestamp of a slice range."""

from __future__ import annotations

import contextlib

import msgspec
import trio

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata
from fluvial.journal.api import EventStored
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
    event,
    events,
    replicated_ids,
)


class LookupContract:
    """Bounded and payload-free reads by slices, and loading one event."""

    async def _append_some(self, journal: JournalUnderTest) -> list[EventRecord]:
        pids = entity_ids(ENTITY_TYPE, SliceRange.all(), 4)
        (other,) = entity_ids(OTHER_ENTITY_TYPE, SliceRange.all(), 1)
        stored: list[EventRecord] = []
        for first in (1, 3, 5):
            for pid in pids:
                stored += await journal.append(events(pid, first, 2))
            await journal.append(events(other, first, 2))
        return stored

    async def test_events_by_slices_stop_at_the_upper_timestamp_inclusive(
        self, journal: JournalUnderTest
    ) -> None:
        stored = await self._append_some(journal)
        for bound in (stored[0], stored[len(stored) // 2], stored[-1]):
            expected = [r for r in stored if r.timestamp <= bound.timestamp]
            for page_size in (1, 3, 1000):
                got = await current_by_slices(
                    journal,
                    ENTITY_TYPE,
                    SliceRange.all(),
                    to_timestamp=bound.timestamp,
                    page_size=page_size,
                )
                assert got == expected
        assert (
            await current_by_slices(
                journal, ENTITY_TYPE, SliceRange.all(), to_timestamp=stored[0].timestamp - 1
            )
            == []
        )
        # From an offset, up to a bound: the window between them.
        offset = TimestampOffset.start().advanced_to(stored[2])
        window = await journal.read_events_by_slices(
            ENTITY_TYPE, SliceRange.all(), offset, 1000, to_timestamp=stored[6].timestamp
        )
        assert window == stored[3:7]

    async def test_events_by_slices_without_payloads_are_the_same_events_without_them(
        self, journal: JournalUnderTest
    ) -> None:
        stored = await self._append_some(journal)
        for slices in (SliceRange.all(), LOW):
            with_payloads = await current_by_slices(journal, ENTITY_TYPE, slices, page_size=3)
            without = await current_by_slices(
                journal, ENTITY_TYPE, slices, with_payloads=False, page_size=3
            )
            assert without == [msgspec.structs.replace(r, payload=None) for r in with_payloads]
        assert len(with_payloads) < len(stored)  # LOW is a part of them

    async def test_load_event_returns_the_stored_event_with_its_payload(
        self, journal: JournalUnderTest
    ) -> None:
        stored = await self._append_some(journal)
        tagged_pid = entity_ids(ENTITY_TYPE, SliceRange.all(), 5)[4]
        tagged = await journal.append([event(tagged_pid, 1, tags=frozenset({"t"}))])
        for record in [*stored[::5], stored[-1], *tagged]:
            assert await journal.load_event(record.persistence_id, record.seq_nr) == record
        some = stored[0]
        assert await journal.load_event(some.persistence_id, 7) is None
        assert await journal.load_event(some.persistence_id, 0) is None
        assert await journal.load_event(f"{ENTITY_TYPE}|unknown", 1) is None

    async def test_latest_event_timestamp_is_the_newest_of_one_entity_type_and_slice_range(
        self, journal: JournalUnderTest
    ) -> None:
        (first,) = entity_ids(ENTITY_TYPE, SliceRange(3, 3), 1)
        (second,) = entity_ids(ENTITY_TYPE, SliceRange(700, 1023), 1)
        (other,) = entity_ids(OTHER_ENTITY_TYPE, SliceRange(3, 3), 1)
        ranges = [SliceRange.all(), SliceRange(3, 3), SliceRange(0, 699), HIGH, SliceRange(4, 4)]

        async def latest() -> list[int | None]:
            return [await journal.latest_event_timestamp(ENTITY_TYPE, r) for r in ranges]

        assert await latest() == [None] * len(ranges)  # an empty journal has none
        low = await journal.append(events(first, 1, 3))
        assert await latest() == [
            low[-1].timestamp,
            low[-1].timestamp,
            low[-1].timestamp,
            None,
            None,
        ]
        high = await journal.append(events(second, 1, 2))
        # Another entity type's newer events count for none of this one's ranges.
        await journal.append(events(other, 1, 2))
        assert await latest() == [
            high[-1].timestamp,
            low[-1].timestamp,
            low[-1].timestamp,
            high[-1].timestamp,
            None,
        ]
        assert await journal.latest_event_timestamp("NoSuchType", SliceRange.all()) is None

    async def test_events_by_slices_leave_out_the_payloads_of_one_origin(
        self, journal: JournalUnderTest
    ) -> None:
        (local,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        pid, other = replicated_ids(ENTITY_TYPE, SliceRange.all(), 2)
        for origin, target in (("A", pid), ("B", other)):
            await journal.write_from_elsewhere(
                [
                    msgspec.structs.replace(
                        e, write_timestamp=1 + e.seq_nr, replication=ReplicationMetadata(origin, 1)
                    )
                    for e in events(target, 1, 2)
                ]
            )
        await journal.append(events(local, 1, 2))
        everything = await current_by_slices(journal, ENTITY_TYPE, SliceRange.all())
        for page_size in (1, 1000):
            not_to_a = await current_by_slices(
                journal, ENTITY_TYPE, SliceRange.all(), exclude_origin="A", page_size=page_size
            )
            # Placeholders in their place: the consumer's seq nrs stay gapless.
            assert not_to_a == [
                msgspec.structs.replace(r, payload=None) if r.persistence_id == str(pid) else r
                for r in everything
            ]
        assert (
            await current_by_slices(journal, ENTITY_TYPE, SliceRange.all(), exclude_origin="C")
            == everything
        )

    async def test_a_follower_gets_one_origins_events_as_placeholders(
        self, journal: JournalUnderTest
    ) -> None:
        (local,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        (pid,) = replicated_ids(ENTITY_TYPE, SliceRange.all(), 1)

        def from_a(records: list[EventRecord]) -> list[EventRecord]:
            return [
                msgspec.structs.replace(
                    e, write_timestamp=e.seq_nr, replication=ReplicationMetadata("A", e.seq_nr)
                )
                for e in records
            ]

        with trio.fail_after(TIMEOUT):
            query = events_by_slices(journal, ENTITY_TYPE, SliceRange.all(), exclude_origin="A")
            async with contextlib.aclosing(query) as stream:
                await journal.write_from_elsewhere(from_a(events(pid, 1, 1)))
                assert (await anext(stream)).payload is None  # caught up
                appended = await journal.append(events(local, 1, 1))
                assert await anext(stream) == appended[0]
                stored = await journal.write_from_elsewhere(from_a(events(pid, 2, 1)))
                assert isinstance(stored[0], EventStored)
                assert await anext(stream) == msgspec.structs.replace(
                    stored[0].record, payload=None
                )  # followed
