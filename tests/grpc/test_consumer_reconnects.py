"""The gRPC source's reconnects on the virtual clock: backoff with jitter and a cap, a stream
silent past the heartbeat timeout, where a reopened stream resumes, and what it does not retry.

A fake channel stands in for grpclib (the `Channel` protocol of `fluvial.grpc._consumer`): each
`open_stream` plays the next step of a script, so the times asserted are the consumer's own.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from consumer_fakes import (
    NO_JITTER,
    SLICES,
    STARTED,
    FakeChannel,
    Refuse,
    Serve,
    batch,
    record,
)

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.grpc import (
    ConsumerSettings,
    GrpcConsumer,
    GrpcNotFound,
    GrpcUnauthenticated,
    ProducerProtocolError,
    Reconnect,
    TlsHandshakeFailed,
)
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.projection.api import SourceMessage


async def run_source(
    channel: FakeChannel,
    settings: ConsumerSettings,
    *,
    receive_for: float,
    offset: TimestampOffset | None = None,
) -> tuple[float, list[SourceMessage]]:
    """Run the source for `receive_for` virtual seconds after it started: when it started,
    and what it sent."""
    source = GrpcConsumer(channel, settings).source("carts", SLICES)
    send, receive = trio.open_memory_channel[SourceMessage](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, offset or TimestampOffset.start(), send)
        started = trio.current_time()
        await trio.sleep(receive_for)
        nursery.cancel_scope.cancel()
    received = []
    while True:
        try:
            received.append(receive.receive_nowait())
        except trio.WouldBlock:
            return started, received


async def test_refused_connections_are_retried_with_exponential_backoff_up_to_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    channel = FakeChannel([Refuse()] * 5 + [Serve()])
    started, _ = await run_source(channel, ConsumerSettings(reconnect=NO_JITTER), receive_for=1)
    # 0.5, 1, 2, then capped at 4, 4.
    assert channel.opened_at == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]
    assert started == 11.5


async def test_jitter_spreads_each_delay_within_its_band(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reconnect = Reconnect(initial=1.0, maximum=100.0, multiplier=2.0, jitter=0.25)
    channel = FakeChannel([Refuse()] * 6 + [Serve()])
    await run_source(channel, ConsumerSettings(reconnect=reconnect), receive_for=1)
    delays = [b - a for a, b in zip(channel.opened_at, channel.opened_at[1:], strict=False)]
    for attempt, delay in enumerate(delays):
        base = 2.0**attempt
        assert 0.75 * base <= delay <= 1.25 * base, (attempt, delay)
    assert len(set(delays)) > 1


def test_backoff_delays_are_capped_also_with_jitter_and_checked() -> None:
    reconnect = Reconnect(initial=1.0, maximum=10.0, multiplier=2.0, jitter=0.5)
    assert reconnect.delay(0, 0.5) == 1.0
    assert reconnect.delay(0, 0.0) == 0.5
    assert reconnect.delay(3, 1.0) == 10.0  # 8 * 1.5 = 12, capped
    assert reconnect.delay(10_000, 0.5) == 10.0  # no overflow
    with pytest.raises(UsageError, match="jitter"):
        Reconnect(jitter=1.0)
    with pytest.raises(UsageError, match="maximum"):
        Reconnect(initial=2.0, maximum=1.0)
    with pytest.raises(UsageError, match="heartbeat_timeout"):
        ConsumerSettings(heartbeat_timeout=0)


async def test_a_broken_stream_is_reopened_and_resumes_after_the_last_query_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a1, b1, a2 = record("a", 1, 100), record("b", 1, 200), record("a", 2, 200)
    live = record("c", 1, 300)
    channel = FakeChannel(
        [
            Serve([STARTED, batch(pb.EventPath.QUERY, [a1, b1, a2])], then="break"),
            Serve([STARTED, batch(pb.EventPath.LIVE, [live])], then="break"),
            Serve([STARTED], then="silent"),
        ]
    )
    settings = ConsumerSettings(reconnect=NO_JITTER)
    _, received = await run_source(channel, settings, receive_for=10)
    # The backoff starts again after each stream that started.
    assert channel.opened_at == [0.0, 0.5, 1.0]
    assert channel.dropped_at == []  # grpclib made a new connection itself
    assert received == [([a1, b1, a2], EnvelopeSource.QUERY), ([live], EnvelopeSource.LIVE)]
    assert channel.inits[0].offsets == []
    # Resumed after the query batch, for every slice, each seen entity under its slice; the
    # live batch moved nothing (only the query does).
    for init in channel.inits[1:]:
        assert len(init.offsets) == 1024
        assert {o.timestamp for o in init.offsets} == {200}
        seen = {o.slice: dict(o.seen) for o in init.offsets if o.seen}
        assert seen == {b1.slice: {b1.persistence_id: 1}, a2.slice: {a2.persistence_id: 2}}


async def test_a_stream_silent_past_the_heartbeat_timeout_is_reopened(
    autojump_clock: trio.testing.MockClock,
) -> None:
    heartbeat = pb.StreamEventsResponse(heartbeat=pb.Heartbeat())
    channel = FakeChannel([Serve([STARTED, heartbeat], then="silent"), Serve(then="silent")])
    settings = ConsumerSettings(reconnect=NO_JITTER, heartbeat_timeout=15.0)
    await run_source(channel, settings, receive_for=20)
    assert channel.opened_at == [0.0, 15.5]
    assert channel.dropped_at == [15.0]  # the connection may be dead: the next one is new


async def test_time_spent_waiting_for_a_slow_projection_is_not_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batches = [batch(pb.EventPath.QUERY, [record("a", n, n)]) for n in range(1, 4)]
    channel = FakeChannel([Serve([STARTED, *batches], then="silent")])
    source = GrpcConsumer(channel, ConsumerSettings(heartbeat_timeout=5.0)).source("carts", SLICES)
    send, receive = trio.open_memory_channel[SourceMessage](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, TimestampOffset.start(), send)
        for _ in batches:
            await trio.sleep(60)  # a slow handler: the source waits in send, not in receive
            await receive.receive()
        nursery.cancel_scope.cancel()
    assert channel.opened_at == [0.0]


@pytest.mark.parametrize(
    "error",
    [
        GrpcNotFound("no stream 'carts'"),
        GrpcUnauthenticated("a bearer token is needed"),
        TlsHandshakeFailed("the peer's certificate is not trusted"),  # a GrpcUnavailable
    ],
)
async def test_an_error_that_waiting_does_not_cure_fails_the_source_as_itself(
    autojump_clock: trio.testing.MockClock, error: Exception
) -> None:
    channel = FakeChannel([Refuse(error)])
    source = GrpcConsumer(channel, ConsumerSettings()).source("carts", SLICES)
    send, _receive = trio.open_memory_channel[SourceMessage](10)
    with pytest.raises(type(error)) as raised, trio.fail_after(60):
        await source.run(TimestampOffset.start(), send)
    assert raised.value is error
    assert channel.opened_at == [0.0]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([batch(pb.EventPath.QUERY, [])], "before StreamStarted"),
        ([STARTED, STARTED], "StreamStarted twice"),
        ([STARTED, batch(pb.EventPath.UNSPECIFIED, [])], "no known path"),
    ],
)
async def test_a_producer_that_breaks_the_protocol_fails_the_source(
    autojump_clock: trio.testing.MockClock,
    messages: list[pb.StreamEventsResponse],
    match: str,
) -> None:
    channel = FakeChannel([Serve(messages)])
    source = GrpcConsumer(channel, ConsumerSettings()).source("carts", SLICES)
    send, _receive = trio.open_memory_channel[SourceMessage](10)
    with pytest.raises(ProducerProtocolError, match=match):
        await source.run(TimestampOffset.start(), send)


async def test_an_event_outside_the_slice_range_fails_the_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outside = record("a", 1, 100)
    slices = SliceRange(0, 0) if outside.slice else SliceRange(1, 1)
    channel = FakeChannel([Serve([STARTED, batch(pb.EventPath.LIVE, [outside])])])
    source = GrpcConsumer(channel, ConsumerSettings()).source("carts", slices)
    send, _receive = trio.open_memory_channel[SourceMessage](10)
    with pytest.raises(ProducerProtocolError, match="outside the stream's slice range"):
        await source.run(TimestampOffset.start(), send)
