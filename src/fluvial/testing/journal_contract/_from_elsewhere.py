"""The contract of writing events that another journal wrote first: identity kept, local
timestamps, idempotent by seq nr, gaps answered, consistent with appends."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
import trio
import trio.testing

from fluvial.core.ids import ReplicatedPersistenceId, SliceRange
from fluvial.core.records import EventRecord, InvalidAppend
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.journal.api import (
    EventAlreadyStored,
    EventGap,
    EventStored,
    JournalConflict,
    JournalGap,
    WriteFromElsewhereResult,
)
from fluvial.journal.queries import events_by_slices
from fluvial.testing.journal_contract._records import (
    ENTITY_TYPE,
    TIMEOUT,
    JournalUnderTest,
    current_by_slices,
    entity_ids,
    event,
    events,
    read_all,
    replicated_ids,
)

ORIGIN_TIME = 1_600_000_000_000_000  # the origin's clock: long before this journal's


def from_elsewhere(records: list[EventRecord], origin: str | None = None) -> list[EventRecord]:
    """`records` as another journal stored them: with its write timestamps and, with `origin`,
    as events of a replicated entity written first at `origin`."""
    return [
        msgspec.structs.replace(
            r,
            write_timestamp=ORIGIN_TIME + r.seq_nr,
            replication=None
            if origin is None
            else ReplicationMetadata(origin, r.seq_nr, VersionVector.of({origin: r.seq_nr})),
        )
        for r in records
    ]


def stored_records(results: list[WriteFromElsewhereResult]) -> list[EventRecord]:
    """The records of the `EventStored` results, in order."""
    return [r.record for r in results if isinstance(r, EventStored)]


class FromElsewhereContract:
    """`WriteFromElsewhere.write_from_elsewhere`."""

    async def test_events_from_elsewhere_keep_their_identity_and_get_local_timestamps(
        self, journal: JournalUnderTest
    ) -> None:
        (local,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        before = await journal.append(events(local, 1, 1))
        replicated = ReplicatedPersistenceId(ENTITY_TYPE, "cart|7", "eu-west")
        incoming = from_elsewhere(events(replicated, 1, 3), origin="us-east")
        results = await journal.write_from_elsewhere(incoming)
        stored = stored_records(results)
        assert len(stored) == len(results) == 3
        for sent, kept in zip(incoming, stored, strict=True):
            assert msgspec.structs.replace(kept, timestamp=0) == sent
        timestamps = [r.timestamp for r in stored]
        assert timestamps == sorted(set(timestamps))
        assert timestamps[0] > before[0].timestamp  # this journal's clock, not the origin's
        assert [r.write_timestamp for r in stored] == [ORIGIN_TIME + n for n in (1, 2, 3)]
        assert await journal.read_events(str(replicated), 1, 10, 10) == stored
        assert await journal.load_event(str(replicated), 2) == stored[1]
        everything = await current_by_slices(journal, ENTITY_TYPE, SliceRange.all())
        assert everything == [*before, *stored]

    async def test_a_redelivery_is_already_stored_and_changes_nothing(
        self, journal: JournalUnderTest
    ) -> None:
        pid, other = replicated_ids(ENTITY_TYPE, SliceRange.all(), 2)
        first = await journal.write_from_elsewhere(from_elsewhere(events(pid, 1, 3), "A"))
        stored = stored_records(first)
        # Again, and from the middle on with one more: the known ones are acknowledged.
        again = await journal.write_from_elsewhere(from_elsewhere(events(pid, 1, 3), "A"))
        assert again == [EventAlreadyStored(str(pid), n) for n in (1, 2, 3)]
        mixed = from_elsewhere([*events(pid, 2, 3), *events(other, 1, 1)], "A")
        results = await journal.write_from_elsewhere(mixed)
        assert results[:2] == [EventAlreadyStored(str(pid), 2), EventAlreadyStored(str(pid), 3)]
        assert [type(r) for r in results[2:]] == [EventStored, EventStored]
        assert await read_all(journal, pid) == [*stored, stored_records(results)[0]]
        assert await journal.highest_seq_nr(str(other)) == 1

    async def test_a_gap_is_answered_and_stores_nothing_of_the_entity_beyond_it(
        self, journal: JournalUnderTest
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        await journal.write_from_elsewhere(from_elsewhere(events(pid, 1, 2)))
        results = await journal.write_from_elsewhere(
            from_elsewhere([*events(pid, 5, 2), *events(other, 1, 2), *events(pid, 3, 1)])
        )
        assert results[:2] == [EventGap(str(pid), 5, 2), EventGap(str(pid), 6, 2)]
        assert [type(r) for r in results[2:]] == [EventStored] * 3
        assert [r.seq_nr for r in await read_all(journal, pid)] == [1, 2, 3]
        assert [r.seq_nr for r in await read_all(journal, other)] == [1, 2]
        # An unknown entity starts at seq nr 1; the sender fills the gap, then the rest.
        (new,) = entity_ids(ENTITY_TYPE, SliceRange(0, 1023), 3)[2:]
        assert await journal.write_from_elsewhere(from_elsewhere(events(new, 2, 1))) == [
            EventGap(str(new), 2, 0)
        ]
        filled = await journal.write_from_elsewhere(from_elsewhere(events(pid, 4, 3)))
        assert [type(r) for r in filled] == [EventStored] * 3
        assert [r.seq_nr for r in await read_all(journal, pid)] == [1, 2, 3, 4, 5, 6]

    async def test_appends_and_writes_from_elsewhere_check_each_others_seq_nrs(
        self, journal: JournalUnderTest
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        await journal.append(events(pid, 1, 1))
        await journal.write_from_elsewhere(from_elsewhere(events(pid, 2, 2)))
        with pytest.raises(JournalConflict):
            await journal.append(events(pid, 3, 1))
        with pytest.raises(JournalGap):
            await journal.append(events(pid, 5, 1))
        await journal.append(events(pid, 4, 1))
        results = await journal.write_from_elsewhere(from_elsewhere(events(pid, 4, 2)))
        assert results[0] == EventAlreadyStored(str(pid), 4)
        assert results[1] == EventStored(await journal.load_event(str(pid), 5) or event(pid, 0))
        assert [r.seq_nr for r in await read_all(journal, pid)] == [1, 2, 3, 4, 5]

    async def test_concurrent_senders_of_the_same_events_store_each_once(
        self, journal: JournalUnderTest
    ) -> None:
        pids = entity_ids(ENTITY_TYPE, SliceRange.all(), 5)
        batch = from_elsewhere([e for pid in pids for e in events(pid, 1, 3)])
        answers: list[list[WriteFromElsewhereResult]] = []

        async def send() -> None:
            answers.append(await journal.write_from_elsewhere(batch))

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(send)
        assert sum(len(stored_records(a)) for a in answers) == len(batch)
        for answer in answers:
            assert all(isinstance(r, EventStored | EventAlreadyStored) for r in answer)
        for pid in pids:
            assert [r.seq_nr for r in await read_all(journal, pid)] == [1, 2, 3]

    async def test_a_follower_receives_events_from_elsewhere(
        self, journal: JournalUnderTest
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        with trio.fail_after(TIMEOUT):
            query = events_by_slices(journal, ENTITY_TYPE, SliceRange.all())
            received: list[EventRecord] = []
            async with contextlib.aclosing(query) as stream, trio.open_nursery() as nursery:

                async def follow() -> None:
                    async for record in stream:
                        received.append(record)
                        if len(received) == 2:
                            return

                nursery.start_soon(follow)
                await trio.testing.wait_all_tasks_blocked()
                results = await journal.write_from_elsewhere(from_elsewhere(events(pid, 1, 2)))
        assert received == stored_records(results)

    @pytest.mark.parametrize("field", ["seq_nr", "write_timestamp"])
    async def test_events_without_a_seq_nr_or_write_timestamp_are_invalid_and_nothing_is_stored(
        self, journal: JournalUnderTest, field: str
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        good = from_elsewhere(events(other, 1, 1))
        bad = msgspec.structs.replace(from_elsewhere(events(pid, 1, 1))[0], **{field: 0})
        with pytest.raises(InvalidAppend):
            await journal.write_from_elsewhere([*good, bad])
        assert await current_by_slices(journal, ENTITY_TYPE, SliceRange.all()) == []
        assert await journal.write_from_elsewhere([]) == []

    async def test_replication_metadata_on_a_plain_persistence_id_is_invalid(
        self, journal: JournalUnderTest
    ) -> None:
        """Only a replicated entity's events (`type|id|replica`) carry replication metadata:
        `EventEnvelope.entity_id` reads the id by that rule."""
        (pid,) = entity_ids(ENTITY_TYPE, SliceRange.all(), 1)
        (bad,) = from_elsewhere(events(pid, 1, 1), "A")
        with pytest.raises(InvalidAppend, match="replicated"):
            await journal.write_from_elsewhere([bad])
        with pytest.raises(InvalidAppend, match="replicated"):
            await journal.append([msgspec.structs.replace(bad, write_timestamp=0)])
        assert await current_by_slices(journal, ENTITY_TYPE, SliceRange.all()) == []

    @pytest.mark.parametrize("field", ["entity_type", "slice"])
    async def test_events_whose_entity_type_or_slice_is_not_their_persistence_ids_are_invalid(
        self, journal: JournalUnderTest, field: str
    ) -> None:
        pid, other = entity_ids(ENTITY_TYPE, SliceRange.all(), 2)
        good = from_elsewhere(events(other, 1, 1))
        (record,) = from_elsewhere(events(pid, 1, 1))
        wrong = {"entity_type": "Other", "slice": (record.slice + 1) % 1024}[field]
        bad = msgspec.structs.replace(record, **{field: wrong})
        with pytest.raises(InvalidAppend, match=field.replace("_", " ")):
            await journal.write_from_elsewhere([*good, bad])
        assert await current_by_slices(journal, ENTITY_TYPE, SliceRange.all()) == []
