"""Backpressure through serve_producer over real loopback: a consumer that stops reading
makes its stream wait (HTTP/2 flow control, then the producer's bounded buffers, then the
journal query), so the producer reads only a bounded part of the journal for it; another
consumer's stream, on the same channel, receives everything meanwhile; and once the slow one
reads again it gets every event."""

from __future__ import annotations

from typing import Any

import attrs
import trio
from producer_service_helpers import (
    QUIET,
    events_stream,
    init_request,
    producer_channel,
    receive_events,
)

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_TIMESTAMP, EventRecord
from fluvial.grpc import EventProducerSource, ProducerStreamSettings
from fluvial.journal.memory import MemoryJournal
from fluvial.projection._source_settings import SourceSettings
from producer_fixtures import ENTITY_TYPE, INTERNAL, PUBLIC, Added, CountingJournal

# Events travel as stored (no transformation): ~1 KiB each, so that the HTTP/2 windows
# (grpclib's client: 4 MiB per stream) fill with a few thousand.
AS_STORED: EventProducerSource[Any, Any] = EventProducerSource(
    stream_id="accounts", entity_type=ENTITY_TYPE, serializers=PUBLIC
)
ENTITIES, PER_ENTITY = 40, 250  # 10,000 events, ~10 MiB
PAGE, BATCH = 200, 50
SETTINGS = attrs.evolve(
    QUIET,
    stream=ProducerStreamSettings(
        batch_size=BATCH,
        source=SourceSettings(page_size=PAGE, live_buffer=100, backtracking_interval=None),
    ),
)
# The slow consumer asks for every slice, the other for all but the last one: the journal
# below counts what the query read for each.
SLOW, FAST = SliceRange(0, 1023), SliceRange(0, 1022)


class ReadsBySlices(CountingJournal):
    """Counts the records its query read, per slice range asked for."""

    def __init__(self, journal: MemoryJournal) -> None:
        super().__init__(journal)
        self.read: dict[SliceRange, int] = {SLOW: 0, FAST: 0}

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
        page = await super().read_events_by_slices(
            entity_type,
            slices,
            after,
            limit,
            to_timestamp=to_timestamp,
            with_payloads=with_payloads,
            exclude_origin=exclude_origin,
        )
        self.read[slices] += len(page)
        return page


async def test_a_consumer_that_does_not_read_is_bounded_and_does_not_slow_another() -> None:
    memory = MemoryJournal()
    pids = [f"{ENTITY_TYPE}|e{n}" for n in range(ENTITIES * 2)]
    pids = [pid for pid in pids if slice_for(pid) != 1023][:ENTITIES]
    for pid in pids:
        await memory.append(
            [
                EventRecord(
                    pid, n, ENTITY_TYPE, slice_for(pid), INTERNAL.encode(Added(n, "x" * 1000))
                )
                for n in range(1, PER_ENTITY + 1)
            ]
        )
    total = ENTITIES * PER_ENTITY
    journal = ReadsBySlices(memory)
    async with (
        producer_channel(journal, sources=[AS_STORED], settings=SETTINGS) as channel,
        events_stream(channel, init_request(slice_max=SLOW.max)) as slow,
        events_stream(channel, init_request(slice_max=FAST.max)) as fast,
    ):
        with trio.fail_after(60):
            received = await receive_events(fast, total)
        assert sum(len(seq_nrs) for seq_nrs in received.values()) == total
        await trio.sleep(0.5)  # the slow stream's every buffer has filled by now
        # What the producer read for the slow one: the client's 4 MiB stream window (about
        # 4,000 events of ~1 KiB), the producer's few batches and one page; not the 10,000.
        assert journal.read[SLOW] <= 4_300 + 4 * BATCH + 2 * PAGE, journal.read[SLOW]
        with trio.fail_after(60):
            late = await receive_events(slow, total)
        assert {pid: sorted(s) for pid, s in late.items()} == {
            pid: list(range(1, PER_ENTITY + 1)) for pid in pids
        }
