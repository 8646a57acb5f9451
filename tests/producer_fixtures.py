"""Shared by the producer pipeline tests: events in an internal and a public form, a source
that publishes one as the other, a journal that counts (and can stall) its query, and helpers
that append events and collect what a stream sent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_TIMESTAMP, EventEnvelope, EventRecord
from fluvial.core.replication_stream import AppendedCriteria, ProducerStream
from fluvial.core.replication_stream_messages import Init, SliceOffset, ValidInit
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc import EventProducerSource
from fluvial.journal._live import LivePublisher
from fluvial.journal.api import HasLivePath, Journal
from fluvial.projection.api import Batch

ENTITY_TYPE = "Account"
ALL = SliceRange.all()


@attrs.frozen
class Added:
    """The internal event."""

    amount: int
    secret: str = ""


@attrs.frozen
class Credited:
    """The public event: no secret, in cents."""

    cents: int


INTERNAL = SerializerRegistry()
INTERNAL.register(Added, "internal.Added")
PUBLIC = SerializerRegistry()
PUBLIC.register(Credited, "public.Credited")


def to_public(envelope: EventEnvelope[Added]) -> Credited | None:
    """Negative amounts are not published: they travel as placeholders."""
    if envelope.event.amount < 0:
        return None
    return Credited(envelope.event.amount * 100)


SOURCE: EventProducerSource[Added, Credited] = EventProducerSource(
    stream_id="accounts", entity_type=ENTITY_TYPE, serializers=PUBLIC, transformation=to_public
)


def valid_init(
    source: EventProducerSource[Any, Any] = SOURCE,
    *,
    slices: SliceRange = ALL,
    offsets: Sequence[SliceOffset] = (),
    with_payloads: bool = True,
) -> ValidInit[Any]:
    """An Init accepted by the real stream core."""
    stream: ProducerStream[Any, object] = ProducerStream(
        {source.stream_id: source.entity_type}, AppendedCriteria()
    )
    answer = stream.receive(
        Init(
            stream_id=source.stream_id,
            slice_min=slices.min,
            slice_max=slices.max,
            offsets=offsets,
            criteria=None,
            with_payloads=with_payloads,
        )
    )
    assert isinstance(answer, ValidInit), answer
    return answer


class Appender:
    """Appends `Added` events, numbering each entity's seq nrs."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.seq_nrs: dict[str, int] = defaultdict(int)
        self.commits = 0  # its appends: all the journal's, where only the test writes

    async def append(self, entity_id: str, *amounts: int) -> list[EventRecord]:
        pid = f"{ENTITY_TYPE}|{entity_id}"
        first = self.seq_nrs[pid] + 1
        records = [
            EventRecord(pid, first + i, ENTITY_TYPE, slice_for(pid), INTERNAL.encode(Added(a, "s")))
            for i, a in enumerate(amounts)
        ]
        stored = await self.journal.append(records)
        self.seq_nrs[pid] += len(records)
        self.commits += 1
        return list(stored)


class Received:
    """What a stream sent, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def collect(
        self, receive: trio.MemoryReceiveChannel[Batch], until: int, *, path: object = None
    ) -> None:
        """Receive batches until `until` records came (of `path`, if given)."""
        while self.count(path) < until:
            self.batches.append(await receive.receive())

    def count(self, path: object = None) -> int:
        return sum(len(r) for r, p in self.batches if path is None or p is path)

    def records(self, path: EnvelopeSource | None = None) -> list[EventRecord]:
        return [r for rs, p in self.batches if path is None or p is path for r in rs]

    def seq_nrs(self, path: EnvelopeSource | None = None) -> dict[str, list[int]]:
        by_pid: dict[str, list[int]] = defaultdict(list)
        for record in self.records(path):
            by_pid[record.persistence_id].append(record.seq_nr)
        return dict(by_pid)


def public_cents(record: EventRecord) -> int | None:
    """The public event's cents, None for a placeholder."""
    if record.payload is None:
        return None
    event = PUBLIC.decode(record.payload, persistence_id=record.persistence_id, seq_nr=0)
    assert isinstance(event, Credited)
    return event.cents


class CountingJournal:
    """A journal that counts the records its events-by-slices query returned, and whose
    query can be stalled (`stall`): what a stream receives then came by the live path."""

    def __init__(self, journal: Journal) -> None:
        self.inner = journal
        self.read_by_query = 0
        self.query_reads = 0
        self.stalled: trio.Event | None = None

    @property
    def live(self) -> LivePublisher:
        assert isinstance(self.inner, HasLivePath)
        return self.inner.live

    def stall(self) -> None:
        self.stalled = trio.Event()

    def resume(self) -> None:
        assert self.stalled is not None
        self.stalled.set()
        self.stalled = None

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
        if self.stalled is not None:
            await self.stalled.wait()
        page = await self.inner.read_events_by_slices(
            entity_type,
            slices,
            after,
            limit,
            to_timestamp=to_timestamp,
            with_payloads=with_payloads,
            exclude_origin=exclude_origin,
        )
        self.query_reads += 1
        self.read_by_query += len(page)
        return page

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        return await self.inner.append(events)

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        return await self.inner.read_events(persistence_id, from_seq_nr, to_seq_nr, limit)

    async def highest_seq_nr(self, persistence_id: str) -> int:
        return await self.inner.highest_seq_nr(persistence_id)

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        return await self.inner.load_event(persistence_id, seq_nr)

    async def latest_event_timestamp(self, entity_type: str, slices: SliceRange) -> int | None:
        return await self.inner.latest_event_timestamp(entity_type, slices)

    def append_count(self) -> int:
        return self.inner.append_count()

    async def wait_for_new_events(self, seen_append_count: int) -> None:
        await self.inner.wait_for_new_events(seen_append_count)
