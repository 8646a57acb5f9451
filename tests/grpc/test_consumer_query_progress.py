"""A followed event crosses the wire once: the producer leaves the query's copy of what it sent
by LIVE out and sends a QueryProgress instead; the consumer hands its LIVE copies to the
runner as the query's, so the offsets move as before, and a reopened stream resumes from the
progress, losing and doubling nothing.

The first tests drive the consumer's source on the virtual clock with a scripted producer
(`consumer_fakes`); the others run the real producer and consumer over loopback, watching
what crosses the wire."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from consumer_fakes import NO_JITTER, SLICES, STARTED, FakeChannel, Serve, batch, record
from consumer_helpers import (
    FaultyProxy,
    World,
    fold,
    wait_for_model,
)

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.grpc import (
    ChannelSettings,
    ConsumerSettings,
    GrpcConsumer,
    KeepAlive,
    ProducerProtocolError,
    Reconnect,
)
from fluvial.grpc._batch_codec import decode_events
from fluvial.grpc._channel import GrpcChannel, open_channel
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.projection.api import QueryReached, SourceMessage

QUERY, LIVE = EnvelopeSource.QUERY, EnvelopeSource.LIVE
# Back soon after a dropped connection.
FAST = ConsumerSettings(
    channel=ChannelSettings(keepalive=KeepAlive(interval=0.3, timeout=1.0)),
    reconnect=Reconnect(initial=0.05, maximum=0.5),
    call_timeout=5.0,
)
ENTITIES = [f"e{n}" for n in range(6)]


def progress(timestamp: int, **seen: int) -> pb.StreamEventsResponse:
    return pb.StreamEventsResponse(
        query_progress=pb.QueryProgress(
            timestamp=timestamp, seen={f"Cart|{e}": n for e, n in seen.items()}
        )
    )


async def run_source(channel: FakeChannel, *, receive_for: float) -> list[SourceMessage]:
    """What the source hands its runner in `receive_for` virtual seconds."""
    source = GrpcConsumer(channel, ConsumerSettings(reconnect=NO_JITTER)).source("carts", SLICES)
    send, receive = trio.open_memory_channel[SourceMessage](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, TimestampOffset.start(), send)
        await trio.sleep(receive_for)
        nursery.cancel_scope.cancel()
    send.close()
    return [batch async for batch in receive]


async def test_a_progress_hands_the_live_copies_it_passed_to_the_runner_as_the_querys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a1, b1, a2 = record("a", 1, 100), record("b", 1, 200), record("a", 2, 300)
    channel = FakeChannel(
        [
            Serve([STARTED, batch(pb.EventPath.LIVE, [a1, b1, a2]), progress(200, b=1)], "break"),
            Serve([STARTED], then="silent"),
        ]
    )
    received = await run_source(channel, receive_for=5)
    # The QUERY copies of what the progress passed (not a2, after it), each once; then the
    # position itself, for the offsets of the slices without events (none came of them).
    assert received == [([a1, b1, a2], LIVE), ([a1, b1], QUERY), QueryReached(200)]
    assert channel.inits[0].query_progress  # the consumer asks for progress messages
    # The reopened stream resumes from the progress, for every slice.
    reopened = channel.inits[1]
    assert {(o.timestamp, tuple(o.seen.items())) for o in reopened.offsets} == {
        (200, ()),
        (200, ((b1.persistence_id, 1),)),
    }


async def test_a_query_batch_brings_the_live_copies_it_passed_once_in_timestamp_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a1, b1, c1, a2 = (
        record("a", 1, 100),
        record("b", 1, 200),
        record("c", 1, 300),
        record("a", 2, 400),
    )
    channel = FakeChannel(
        [
            Serve(
                [
                    STARTED,
                    batch(pb.EventPath.LIVE, [a1, b1]),
                    # c1 did not come by LIVE: the query sends it; what went LIVE before it
                    # was left out, and the runner gets the query's copies of those with it.
                    batch(pb.EventPath.QUERY, [c1]),
                    batch(pb.EventPath.LIVE, [a2]),
                    # A producer that leaves nothing out (it does not know QueryProgress):
                    # its copy of a2 is not doubled.
                    batch(pb.EventPath.QUERY, [a2]),
                ]
            )
        ]
    )
    received = await run_source(channel, receive_for=5)
    assert received == [([a1, b1], LIVE), ([a1, b1, c1], QUERY), ([a2], LIVE), ([a2], QUERY)]


async def test_a_progress_behind_the_query_fails_the_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    query = batch(pb.EventPath.QUERY, [record("a", 1, 500)])
    channel = FakeChannel([Serve([STARTED, query, progress(400)])])
    source = GrpcConsumer(channel, ConsumerSettings()).source("carts", SLICES)
    send, _receive = trio.open_memory_channel[SourceMessage](10)
    with pytest.raises(ProducerProtocolError, match="behind the stream's offset 500"):
        await source.run(TimestampOffset.start(), send)


# -- the real producer and consumer over loopback ----------------------------------------------


class _SpiedStream:
    def __init__(self, stream: Any, spy: WireSpy) -> None:
        self.stream = stream
        self.spy = spy

    async def send(self, message: pb.StreamEventsRequest) -> None:
        if message.init is not None:
            self.spy.inits.append(message.init)
        await self.stream.send(message)

    async def receive(self) -> pb.StreamEventsResponse | None:
        response: pb.StreamEventsResponse | None = await self.stream.receive()
        if response is not None:
            self.spy.responses.append(response)
        return response


class WireSpy:
    """A consumer's channel that keeps what crossed the wire on its streams."""

    def __init__(self, channel: GrpcChannel) -> None:
        self.channel = channel
        self.inits: list[pb.StreamInit] = []
        self.responses: list[pb.StreamEventsResponse] = []

    async def unary(self, method: str, request: Any, reply_type: Any, **kwargs: Any) -> Any:
        return await self.channel.unary(method, request, reply_type, **kwargs)

    async def drop_connection(self) -> None:
        await self.channel.drop_connection()

    @asynccontextmanager
    async def open_stream(
        self, method: str, request_type: Any, reply_type: Any, *, metadata: Any = ()
    ) -> AsyncIterator[Any]:
        async with self.channel.open_stream(
            method, request_type, reply_type, metadata=metadata
        ) as stream:
            yield _SpiedStream(stream, self)

    def copies(self) -> Counter[tuple[str, int]]:
        """How often each event crossed in a QUERY or LIVE batch."""
        counted: Counter[tuple[str, int]] = Counter()
        for response in self.responses:
            sent = response.batch
            if sent is not None and sent.path in (pb.EventPath.QUERY, pb.EventPath.LIVE):
                records = decode_events(sent.events, encoding=int(sent.encoding))
                counted.update((r.persistence_id, r.seq_nr) for r in records)
        return counted

    def progresses(self) -> list[pb.QueryProgress]:
        return [r.query_progress for r in self.responses if r.query_progress is not None]


async def _append(world: World, rounds: int) -> None:
    """`rounds` events per entity, one at a time, followed live."""
    for round_ in range(rounds):
        for index, entity in enumerate(ENTITIES):
            world.stored.extend(await world.appender.append(entity, round_ + index))
            await trio.sleep(0.002)


async def _stored_offsets_reach(store: Any, stored: list[EventRecord]) -> None:
    """Until the projection's stored offset of every slice is at its last event."""
    last: dict[int, int] = {}
    for record_ in stored:
        last[record_.slice] = record_.timestamp
    with trio.fail_after(10):
        while True:
            offsets = await store.offsets("credits")
            if {s: o.timestamp for s, o in offsets.items()} == last:
                return
            await trio.sleep(0.05)


async def test_a_followed_event_crosses_the_wire_once_and_the_stored_offsets_still_move(
    world: World,
) -> None:
    stored = world.stored
    stored.extend(await world.appender.append("caught-up", 1, 2, 3))  # by the query
    async with open_channel("127.0.0.1", world.producer.port, settings=FAST.channel) as channel:
        spy = WireSpy(channel)
        async with trio.open_nursery() as projecting:
            await world.project(GrpcConsumer(spy, FAST), nursery=projecting)
            await _append(world, 5)
            await wait_for_model(world.consumer_file, fold(stored))
            # The runner had the query's copies: each slice's stored offset is at its last
            # event, which only the QUERY path moves.
            await _stored_offsets_reach(world.consumer_journal.offset_store(), stored)
            copies = spy.copies()
            assert set(copies) == {(r.persistence_id, r.seq_nr) for r in stored}
            doubled = {event: n for event, n in copies.items() if n > 1}
            assert doubled == {}
            assert spy.progresses()
            projecting.cancel_scope.cancel()  # the projection, before its channel closes


async def test_a_reopened_stream_resumes_from_the_progress_losing_and_doubling_nothing(
    world: World,
) -> None:
    proxy = FaultyProxy(world.producer.port)
    await world.nursery.start(proxy.serve)
    stored = world.stored
    async with open_channel("127.0.0.1", proxy.port, settings=FAST.channel) as channel:
        spy = WireSpy(channel)
        async with trio.open_nursery() as projecting:
            await world.project(GrpcConsumer(spy, FAST), nursery=projecting)
            for cut in range(2):
                await _append(world, 3)  # followed live: progress, no QUERY batch
                await wait_for_model(world.consumer_file, fold(stored))
                with trio.fail_after(5):
                    while not spy.progresses() or (  # noqa: ASYNC110 (the producer sends it)
                        spy.progresses()[-1].timestamp < stored[-1].timestamp
                    ):
                        await trio.sleep(0.02)
                last = spy.progresses()[-1]
                proxy.drop()
                with trio.fail_after(10):
                    while len(spy.inits) < cut + 2:  # noqa: ASYNC110 (the consumer reconnects)
                        await trio.sleep(0.05)
                # From the progress: not from where the stream started.
                reopened = spy.inits[cut + 1]
                assert {o.timestamp for o in reopened.offsets} == {last.timestamp}
            await _append(world, 2)
            await wait_for_model(world.consumer_file, fold(stored))  # each event applied once
            projecting.cancel_scope.cancel()  # the projection, before its channel closes
