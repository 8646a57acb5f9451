"""The contract every projection `Source` passes (the local journal's, later the gRPC consumer's).

Use it by subclassing `SourceContract` in a test module, in a class whose name starts with
``Test``, and giving that class a ``source_under_test`` fixture that yields a `SourceUnderTest`:
the provider of the sources under test, and a way to store events where they read::

    pytest.register_assert_rewrite("fluvial.testing.source_contract")
    from fluvial.testing.source_contract import SourceContract, SourceUnderTest

    class TestMySource(SourceContract):
        @pytest.fixture
        async def source_under_test(self) -> AsyncIterator[SourceUnderTest]:
            async with open_my_journal() as journal:
                yield SourceUnderTest(my_provider(journal), journal.append)

The tests need pytest-trio in ``trio_mode``. What the contract promises the projection runner:
a source delivers the events of its entity type and slice range only, each path (query, live,
backtracking) in timestamp order; its query path delivers every event after the offset it was
started from, exactly once, catching up in pages and then following; once started, events
stored after that reach it; and it replays one entity's events, loads one event with its
payload and gives one event's timestamp, answering None (or fewer events) for what it lacks;
a source that tells its latest event timestamp (`HasLatestEventTimestamp`) tells its newest
event's.

Those tests store events from one writer, whose timestamps are commit order. A source over
a journal with concurrent writers (PostgreSQL) promises more, which the suite checks when
`SourceUnderTest.write_late` says how to commit events late: its first-sight rule is
`PREVIOUS_OLDER_THAN_WINDOW`, and an event that commits behind what the query has passed
(which the query then never delivers) still reaches it, by the backtracking path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import attrs
import trio
from msgspec.structs import replace

from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import Batch, HasLatestEventTimestamp, Source, SourceProvider
from fluvial.testing.journal_contract._records import (
    ENTITY_TYPE,
    HIGH,
    LOW,
    OTHER_ENTITY_TYPE,
    TIMEOUT,
    entity_ids,
    events,
    timestamp_order,
)

__all__ = ["SourceContract", "SourceUnderTest"]

# Small pages, so that catching up takes several; no backtracking, so that what arrives comes
# from the query and the live path only (a backtracking source is tested by its own tests).
SETTINGS = SourceSettings(page_size=3, backtracking_interval=None)


# Backtracking often, close behind the clock, for the test of late commits (which control
# when the late event commits, so no timing of theirs depends on these figures).
BACKTRACKING = SourceSettings(
    page_size=3,
    behind_current_time=0.0,
    backtracking_interval=0.05,
    backtracking_behind_current_time=0.05,
    backtracking_span=10.0,
)


@attrs.frozen
class SourceUnderTest:
    """The provider of the sources under test, and `write`, which stores one entity's
    consecutive events where those sources read (e.g. `journal.append`) and returns them as
    stored (with their timestamps).

    `write_late`, for sources over a journal with concurrent writers (None for one whose
    timestamps are commit order: SQLite, memory): ``async with write_late(events) as
    stored:`` stores one entity's consecutive events as another writer would, in a
    transaction that stays open: in the block they have their timestamps (`stored`) but are
    not committed, and other writes commit meanwhile; they commit when the block exits."""

    provider: SourceProvider
    write: Callable[[Sequence[EventRecord]], Awaitable[Sequence[EventRecord]]]
    write_late: (
        Callable[[Sequence[EventRecord]], AbstractAsyncContextManager[Sequence[EventRecord]]] | None
    ) = None


def _key(record: EventRecord) -> tuple[str, int]:
    return record.persistence_id, record.seq_nr


class _Received:
    """What a running source sent, by path."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def of(self, path: EnvelopeSource) -> list[EventRecord]:
        return [r for records, source in self.batches if source is path for r in records]

    def keys(self, path: EnvelopeSource | None) -> set[tuple[str, int]]:
        return {_key(r) for records, s in self.batches if path in (None, s) for r in records}


async def _run_until(
    source: Source,
    offset: TimestampOffset,
    wanted: set[tuple[str, int]],
    then: Callable[[], Awaitable[object]] | None = None,
    path: EnvelopeSource | None = EnvelopeSource.QUERY,
) -> _Received:
    """Run `source` from `offset` (calling `then` once it has started) until it has sent
    every key in `wanted` by `path` (None: by any path); what it sent."""
    received = _Received()
    send, receive = trio.open_memory_channel[Batch](0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, offset, send)
            if then is not None:
                await then()
            while not wanted <= received.keys(path):
                received.batches.append(await receive.receive())
            nursery.cancel_scope.cancel()
    return received


class SourceContract:
    """The contract tests. Subclass in a ``Test*`` class that defines ``source_under_test``."""

    async def _store(
        self, under_test: SourceUnderTest, entity_type: str, slices: SliceRange, count: int
    ) -> list[EventRecord]:
        stored: list[EventRecord] = []
        for pid in entity_ids(entity_type, slices, count):
            stored.extend(await under_test.write(events(pid, 1, 3)))
        return stored

    async def test_the_query_delivers_every_event_of_its_type_and_slices_once_in_order(
        self, source_under_test: SourceUnderTest
    ) -> None:
        wanted = await self._store(source_under_test, ENTITY_TYPE, LOW, 4)
        await self._store(source_under_test, ENTITY_TYPE, SliceRange(512, 1023), 2)
        await self._store(source_under_test, OTHER_ENTITY_TYPE, LOW, 2)
        source = source_under_test.provider.source(ENTITY_TYPE, LOW, SETTINGS)
        received = await _run_until(source, TimestampOffset.start(), {_key(r) for r in wanted})
        assert received.of(EnvelopeSource.QUERY) == timestamp_order(wanted)
        for records, _ in received.batches:
            assert all(r.entity_type == ENTITY_TYPE and r.slice in LOW for r in records)

    async def test_from_an_offset_the_query_delivers_exactly_the_events_after_it(
        self, source_under_test: SourceUnderTest
    ) -> None:
        stored = timestamp_order(await self._store(source_under_test, ENTITY_TYPE, LOW, 4))
        offset = TimestampOffset.start()
        for record in stored[:5]:
            offset = offset.advanced_to(record)
        source = source_under_test.provider.source(ENTITY_TYPE, LOW, SETTINGS)
        received = await _run_until(source, offset, {_key(r) for r in stored[5:]})
        assert received.of(EnvelopeSource.QUERY) == stored[5:]

    async def _store_later(
        self, under_test: SourceUnderTest, path: EnvelopeSource | None
    ) -> tuple[list[EventRecord], _Received]:
        """Store an entity's events 1..3, start a source from the start, store its events 4
        and 5, and receive until `path` brought all five."""
        (pid,) = entity_ids(ENTITY_TYPE, LOW, 1)
        stored = list(await under_test.write(events(pid, 1, 3)))

        async def store_more() -> None:
            stored.extend(await under_test.write(events(pid, 4, 2)))

        source = under_test.provider.source(ENTITY_TYPE, LOW, SETTINGS)
        wanted = {(str(pid), seq_nr) for seq_nr in range(1, 6)}
        received = await _run_until(source, TimestampOffset.start(), wanted, store_more, path)
        for each in EnvelopeSource:
            records = received.of(each)
            assert records == timestamp_order(records), f"{each} out of timestamp order"
        return stored, received

    async def test_events_stored_after_it_started_reach_it(
        self, source_under_test: SourceUnderTest
    ) -> None:
        await self._store_later(source_under_test, None)

    async def test_the_query_follows_after_catching_up(
        self, source_under_test: SourceUnderTest
    ) -> None:
        stored, received = await self._store_later(source_under_test, EnvelopeSource.QUERY)
        assert received.of(EnvelopeSource.QUERY) == timestamp_order(stored)

    async def test_a_replay_gives_one_entitys_events_between_two_seq_nrs_with_payloads(
        self, source_under_test: SourceUnderTest
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, LOW, 1)
        stored = list(await source_under_test.write(events(pid, 1, 5)))
        source = source_under_test.provider.source(ENTITY_TYPE, LOW, SETTINGS)
        with trio.fail_after(TIMEOUT):
            assert list(await source.replay(str(pid), 2, 4)) == stored[1:4]
            assert list(await source.replay(str(pid), 4, 9)) == stored[3:]
            assert list(await source.replay(str(pid), 6, 9)) == []

    async def test_one_event_loads_with_its_payload_and_timestamp(
        self, source_under_test: SourceUnderTest
    ) -> None:
        (pid,) = entity_ids(ENTITY_TYPE, LOW, 1)
        stored = list(await source_under_test.write(events(pid, 1, 2)))
        source = source_under_test.provider.source(ENTITY_TYPE, LOW, SETTINGS)
        with trio.fail_after(TIMEOUT):
            assert await source.load_event(str(pid), 2) == stored[1]
            assert await source.event_timestamp(str(pid), 1) == stored[0].timestamp
            assert await source.load_event(str(pid), 3) is None
            assert await source.event_timestamp(str(pid), 3) is None
            assert await source.load_event(f"{ENTITY_TYPE}|nobody", 1) is None

    async def test_its_latest_event_timestamp_is_its_newest_events_if_it_tells_one(
        self, source_under_test: SourceUnderTest
    ) -> None:
        source = source_under_test.provider.source(ENTITY_TYPE, LOW, SETTINGS)
        if not isinstance(source, HasLatestEventTimestamp):
            return  # optional: such a source reports no lag
        (pid,) = entity_ids(ENTITY_TYPE, LOW, 1)
        (outside,) = entity_ids(ENTITY_TYPE, HIGH, 1)
        (other,) = entity_ids(OTHER_ENTITY_TYPE, LOW, 1)
        with trio.fail_after(TIMEOUT):
            assert await source.latest_event_timestamp() is None
            stored = await source_under_test.write(events(pid, 1, 2))
            # Newer events of other slices and another entity type are not its own.
            await source_under_test.write(events(outside, 1, 1))
            await source_under_test.write(events(other, 1, 1))
            assert await source.latest_event_timestamp() == stored[-1].timestamp

    async def test_its_first_sight_rule_fits_its_writers(
        self, source_under_test: SourceUnderTest
    ) -> None:
        source = source_under_test.provider.source(ENTITY_TYPE, LOW, SETTINGS)
        # Taking a first sight at seq nr n > 1 as the entity's start is right only where
        # seq nr n-1 cannot commit behind the query; the window rule is safe everywhere (a
        # source that cannot tell its producer's writers, like the gRPC consumer, takes it).
        if source_under_test.write_late is not None:
            assert source.first_sight is FirstSight.PREVIOUS_OLDER_THAN_WINDOW

    async def test_with_concurrent_writers_a_late_commit_behind_the_query_arrives_by_backtracking(
        self, source_under_test: SourceUnderTest
    ) -> None:
        write_late = source_under_test.write_late
        if write_late is None:
            return  # timestamps are commit order: nothing commits behind the query
        late_pid, pid = entity_ids(ENTITY_TYPE, LOW, 2)
        source = source_under_test.provider.source(ENTITY_TYPE, LOW, BACKTRACKING)
        received = _Received()
        send, receive = trio.open_memory_channel[Batch](0)

        async def until(key: tuple[str, int], path: EnvelopeSource) -> None:
            while key not in received.keys(path):
                received.batches.append(await receive.receive())

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(source.run, TimestampOffset.start(), send)
                async with write_late(events(late_pid, 1, 1)) as late:
                    (early,) = await source_under_test.write(events(pid, 1, 1))
                    assert late[0].timestamp < early.timestamp
                    # The query passes the early event, and with it the late one's timestamp.
                    await until(_key(early), EnvelopeSource.QUERY)
                await until(_key(late[0]), EnvelopeSource.BACKTRACKING)
                nursery.cancel_scope.cancel()
            stored = await source.load_event(str(late_pid), 1)
        assert stored == late[0]
        assert _key(late[0]) not in received.keys(EnvelopeSource.QUERY)
        (found,) = [r for r in received.of(EnvelopeSource.BACKTRACKING) if _key(r) == _key(stored)]
        # Backtracking may leave the payload out (loaded when accepted): the rest is the event.
        assert replace(found, payload=stored.payload) == stored
        for each in EnvelopeSource:
            records = received.of(each)
            assert records == timestamp_order(records), f"{each} out of timestamp order"
