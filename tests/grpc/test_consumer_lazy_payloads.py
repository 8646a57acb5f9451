"""Through the projection runner, a gRPC source's records without payload: a backtracking
event is loaded (`LoadEvent`) only once it is accepted, a backtracking duplicate never; a
placeholder moves the offset and never reaches the handler; a gap is replayed on the stream."""

from __future__ import annotations

from typing import Any

import attrs
import msgspec
import trio
import trio.testing
from consumer_fakes import STARTED, FakeChannel, Serve, batch, record, replay_answer

from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc import ConsumerSettings, GrpcConsumer
from fluvial.grpc._batch_codec import MSGPACK_ROWS_V1, encode_events
from fluvial.grpc._consumer_wire import LOAD_EVENT, REPLAY
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.memory import MemoryJournal, MemoryOffsetStore
from fluvial.projection import AtLeastOnce, Projection, serve_projection


@attrs.frozen
class Added:
    amount: int


REGISTRY = SerializerRegistry()
REGISTRY.register(Added, "test.Added")


def event(entity_id: str, seq_nr: int, timestamp: int, amount: int | None) -> EventRecord:
    """An event of `Cart|entity_id` with an `Added(amount)` payload (None: a placeholder)."""
    payload = None if amount is None else REGISTRY.encode(Added(amount))
    return msgspec.structs.replace(record(entity_id, seq_nr, timestamp), payload=payload)


def rows(*records: EventRecord) -> bytes:
    return encode_events(records)


async def test_payloads_are_loaded_only_for_accepted_backtracking_events_and_gaps_replayed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b1 = event("b", 1, 100, 10)
    a1 = event("a", 1, 50, 1)  # committed late: the query passed it, backtracking finds it
    c1_placeholder = event("c", 1, 150, None)  # dropped by the producer's filter
    c2 = event("c", 2, 160, 3)
    d3 = event("d", 3, 170, 30)  # live, before the query brought d 1..2: a gap
    stored = {(r.persistence_id, r.seq_nr): r for r in (b1, a1, c1_placeholder, c2, d3)}
    d_events = [event("d", 1, 120, 10), event("d", 2, 130, 20), d3]

    def load(request: pb.LoadEventRequest) -> pb.LoadEventResponse:
        found = stored.get((request.persistence_id, request.seq_nr))
        found_rows = rows(found) if found else rows()
        return pb.LoadEventResponse(encoding=pb.BatchEncoding(MSGPACK_ROWS_V1), events=found_rows)

    def replay(request: pb.StreamReplayRequest) -> list[pb.StreamEventsResponse]:
        last = request.to_seq_nr or 1 << 62
        found = [r for r in d_events if request.from_seq_nr <= r.seq_nr <= last]
        assert request.persistence_id == "Cart|d"
        return [
            replay_answer(request, found[:1], complete=False),
            replay_answer(request, found[1:]),
        ]

    messages = [
        STARTED,
        batch(pb.EventPath.QUERY, [b1, c1_placeholder, c2]),
        # Backtracking without payloads: b1 again (a duplicate: not loaded), a1 (new: loaded).
        batch(pb.EventPath.BACKTRACKING, [_bare(a1), _bare(b1)]),
        batch(pb.EventPath.LIVE, [d3]),
    ]
    channel = FakeChannel([Serve(messages)], unary={LOAD_EVENT: load}, stream_replay=replay)
    settings = ConsumerSettings(first_sight=FirstSight.QUERY_IN_COMMIT_ORDER)
    handled: list[tuple[str, int, int]] = []
    done = trio.Event()

    async def handle(envelope: EventEnvelope[Added]) -> None:
        handled.append((envelope.entity_id, envelope.seq_nr, envelope.event.amount))
        if len(handled) == 6:
            done.set()

    projection: Projection[Added, Any] = Projection("lazy", "carts", AtLeastOnce(handle))
    store = MemoryOffsetStore(MemoryJournal())
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_projection(
                GrpcConsumer(channel, settings),
                REGISTRY,
                projection,
                SliceRange.all(),
                offsets=store,
                task_status=task_status,
            )
        )
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert handled == [
        ("b", 1, 10),
        ("c", 2, 3),
        ("a", 1, 1),
        ("d", 1, 10),
        ("d", 2, 20),
        ("d", 3, 30),
    ]
    loads = [(r.persistence_id, r.seq_nr) for m, r in channel.calls if m == LOAD_EVENT]
    assert loads == [("Cart|a", 1)]
    assert [m for m, _ in channel.calls if m == REPLAY] == []  # in-stream, in two batches
    replays = [
        (r.correlation_id, r.persistence_id, r.from_seq_nr, r.to_seq_nr)
        for r in channel.stream_replays
    ]
    assert replays == [(1, "Cart|d", 1, 3)]


def _bare(record: EventRecord) -> EventRecord:
    """`record` as backtracking sends it: without its payload."""
    return msgspec.structs.replace(record, payload=None)
