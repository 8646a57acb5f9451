"""`serve_projection` through its seams only: a source that is not a journal, a journal that
keeps no offsets, a journal whose backtracking records are loaded only when accepted, and
the envelope fields a handler sees."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import UsageError
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_TIMESTAMP, EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.journal.memory._journal import MemoryJournal
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._handlers import AtLeastOnce
from fluvial.projection._runner import Projection, serve_projection
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import Batch
from projection.projection_helpers import ENTITY_TYPE, NAME, QUIET, REGISTRY, Added, Envelope

PID = f"{ENTITY_TYPE}|a"
REPLICATED_PID = f"{ENTITY_TYPE}|a|edge"  # entity a's stream at replica "edge"


def event(
    seq_nr: int,
    timestamp: int,
    *,
    write_timestamp: int = 0,
    replication: ReplicationMetadata | None = None,
) -> EventRecord:
    pid = PID if replication is None else REPLICATED_PID
    return EventRecord(
        pid,
        seq_nr,
        ENTITY_TYPE,
        slice_for(pid),
        REGISTRY.encode(Added(seq_nr)),
        timestamp=timestamp,
        write_timestamp=write_timestamp,
        replication=replication,
    )


class Handled:
    """An at-least-once handler that keeps the envelopes it gets and wakes waiters."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._changed = trio.Event()

    async def handle(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(15):
            while len(self.envelopes) < count:
                await self._changed.wait()

    def projection(self, source: SourceSettings = QUIET) -> Projection[Added]:
        return Projection(NAME, ENTITY_TYPE, AtLeastOnce(self.handle, save_every=1), source=source)


class BatchSource:
    """A `Source` that is no journal (as a gRPC consumer is not): it sends the batches it is
    given, and replays and loads from its own list of events."""

    first_sight = FirstSight.QUERY_IN_COMMIT_ORDER  # its events come from one writer

    def __init__(self, batches: Sequence[Batch], events: Sequence[EventRecord]) -> None:
        self.batches = batches
        self.events = events
        self.replays: list[tuple[str, int, int]] = []

    def source(self, entity_type: str, slices: SliceRange, settings: SourceSettings) -> BatchSource:
        return self  # a SourceProvider too

    async def run(
        self,
        offset: TimestampOffset,
        send: trio.MemorySendChannel[Batch],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        for batch in self.batches:
            await send.send(batch)
        await trio.sleep_forever()

    async def replay(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int
    ) -> list[EventRecord]:
        self.replays.append((persistence_id, from_seq_nr, to_seq_nr))
        return [
            e
            for e in self.events
            if e.persistence_id == persistence_id and from_seq_nr <= e.seq_nr <= to_seq_nr
        ]

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        found = await self.replay(persistence_id, seq_nr, seq_nr)
        return found[0] if found else None

    async def event_timestamp(self, persistence_id: str, seq_nr: int) -> int | None:
        loaded = await self.load_event(persistence_id, seq_nr)
        return None if loaded is None else loaded.timestamp


async def test_a_source_that_is_not_a_journal_drives_a_projection_and_fills_its_gaps(
    journal: SqliteJournal,
) -> None:
    """The handler sees each envelope with the path that delivered it, its offset, write
    timestamp and replication metadata; a gap is filled by the source's own replay."""

    def replication(seq_nr: int) -> ReplicationMetadata:
        return ReplicationMetadata("edge", seq_nr, VersionVector.of({"edge": seq_nr}))

    one, two, three = (
        event(seq_nr, seq_nr * 1000, write_timestamp=900, replication=replication(seq_nr))
        for seq_nr in (1, 2, 3)
    )
    source = BatchSource(
        [([one], EnvelopeSource.QUERY), ([three], EnvelopeSource.LIVE)], [one, two, three]
    )
    handled = Handled()
    async with trio.open_nursery() as nursery:
        # The offsets in a SQLite file, the events from elsewhere.
        serve = functools.partial(serve_projection, offsets=journal.offset_store())
        await nursery.start(serve, source, REGISTRY, handled.projection())
        await handled.wait_for(3)
        nursery.cancel_scope.cancel()
    assert source.replays == [(REPLICATED_PID, 2, 3)]
    seen = [
        (e.entity_id, e.seq_nr, e.event, e.source, e.offset, e.write_timestamp, e.replication)
        for e in handled.envelopes
    ]
    paths = [EnvelopeSource.QUERY, EnvelopeSource.REPLAY, EnvelopeSource.REPLAY]
    assert seen == [
        (
            "a",
            n,
            Added(n),
            path,
            TimestampOffset(n * 1000, {REPLICATED_PID: n}),
            900,
            replication(n),
        )
        for n, path in zip((1, 2, 3), paths, strict=True)
    ]


class PlainJournal:
    """The memory journal through the `Journal` protocol only: no offset store, no live path.
    Counts `load_event` calls; the events in `late` are left out of the query's pages with
    payloads, as if committed late by a concurrent writer, so only backtracking finds them."""

    def __init__(self) -> None:
        self.inner = MemoryJournal()
        self.loads: list[tuple[str, int]] = []
        self.late: set[tuple[str, int]] = set()
        self.backtracking_records = 0

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        return await self.inner.append(events)

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        return await self.inner.read_events(persistence_id, from_seq_nr, to_seq_nr, limit)

    async def highest_seq_nr(self, persistence_id: str) -> int:
        return await self.inner.highest_seq_nr(persistence_id)

    async def read_events_by_slices(
        self,
        entity_type: str,
        slices: SliceRange,
        after: TimestampOffset,
        limit: int,
        *,
        to_timestamp: int = MAX_TIMESTAMP,
        with_payloads: bool = True,
        exclude_origin: str | None = None,
    ) -> list[EventRecord]:
        page = await self.inner.read_events_by_slices(
            entity_type,
            slices,
            after,
            limit,
            to_timestamp=to_timestamp,
            with_payloads=with_payloads,
            exclude_origin=exclude_origin,
        )
        if with_payloads:
            return [r for r in page if (r.persistence_id, r.seq_nr) not in self.late]
        self.backtracking_records += len(page)
        return page

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        self.loads.append((persistence_id, seq_nr))
        return await self.inner.load_event(persistence_id, seq_nr)

    async def latest_event_timestamp(self, entity_type: str, slices: SliceRange) -> int | None:
        return await self.inner.latest_event_timestamp(entity_type, slices)

    def append_count(self) -> int:
        return self.inner.append_count()

    async def wait_for_new_events(self, seen_append_count: int) -> None:
        await self.inner.wait_for_new_events(seen_append_count)


class WrappingJournal(PlainJournal):
    """A journal that keeps the journal it wraps as `source`: a name `SourceProvider` has."""

    def __init__(self) -> None:
        super().__init__()
        self.source = self.inner


async def test_a_journal_with_an_attribute_named_source_is_read_as_a_journal(
    journal: SqliteJournal,
) -> None:
    wrapping = WrappingJournal()
    await wrapping.append([event(1, 0)])
    handled = Handled()
    async with trio.open_nursery() as nursery:
        serve = functools.partial(serve_projection, offsets=journal.offset_store())
        await nursery.start(serve, wrapping, REGISTRY, handled.projection())
        await handled.wait_for(1)
        nursery.cancel_scope.cancel()
    assert [e.seq_nr for e in handled.envelopes] == [1]


async def test_a_journal_without_an_offset_store_needs_one_given(
    journal: SqliteJournal,
) -> None:
    assert journal.offset_store() is journal.offset_store()  # the SQLite journal has its own
    with pytest.raises(UsageError, match=r"PlainJournal keeps no offsets .*offsets=store"):
        await serve_projection(PlainJournal(), REGISTRY, Handled().projection())  # type: ignore[call-overload]


async def test_backtracking_loads_the_payload_of_what_it_accepts_only(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    """Backtracking reads without payloads: its duplicates are dropped unloaded, and the one
    event that only it finds (committed "late") is loaded, then handled."""
    plain = PlainJournal()
    late_pid = f"{ENTITY_TYPE}|late"
    for pid in (PID, late_pid, f"{ENTITY_TYPE}|b"):
        payload = REGISTRY.encode(Added(1))
        await plain.append([EventRecord(pid, 1, ENTITY_TYPE, slice_for(pid), payload)])
    plain.late.add((late_pid, 1))
    handled = Handled()
    settings = SourceSettings(live=False, backtracking_interval=1.0, backtracking_span=10.0)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(serve_projection, offsets=journal.offset_store())
        await nursery.start(serve, plain, REGISTRY, handled.projection(settings))
        await handled.wait_for(3)
        await trio.sleep(5)  # more rounds of backtracking
        nursery.cancel_scope.cancel()
    # Each event once, whatever the rounds: backtracking follows with a position of its own.
    assert plain.backtracking_records == 3
    assert plain.loads == [(late_pid, 1)]
    by_pid = {e.persistence_id: e for e in handled.envelopes}
    assert len(handled.envelopes) == 3
    assert by_pid[late_pid].source is EnvelopeSource.BACKTRACKING
    assert by_pid[late_pid].event == Added(1)
