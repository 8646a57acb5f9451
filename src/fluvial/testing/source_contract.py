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
payload and gives one event's timestamp, answering None (or fewer events) for what it lacks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import Batch, Source, SourceProvider
from fluvial.testing.journal_contract._records import (
    ENTITY_TYPE,
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


@attrs.frozen
class SourceUnderTest:
    """The provider of the sources under test, and `write`, which stores one entity's
    consecutive events where those sources read (e.g. `journal.append`) and returns them as
    stored (with their timestamps)."""

    provider: SourceProvider
    write: Callable[[Sequence[EventRecord]], Awaitable[Sequence[EventRecord]]]


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
