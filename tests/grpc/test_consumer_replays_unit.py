"""The consumer's in-stream replays and unary calls on the virtual clock, against the fake
channel: a replay is answered while the runner has not taken the stream's batches (the
receive loop reads on for it), its answer is checked, a caller that gave up keeps its place
in the look-ahead until the producer's answer is over, and a unary call is retried after the
backoff while the producer is unavailable, for as long as `call_timeout` leaves time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import trio
import trio.testing
from consumer_fakes import (
    NO_JITTER,
    SLICES,
    STARTED,
    FakeChannel,
    Serve,
    StreamReplayAnswer,
    batch,
    batches,
    record,
    replay_answer,
)

from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.grpc import ConsumerSettings, GrpcConsumer, GrpcUnavailable, ProducerProtocolError
from fluvial.grpc._consumer_wire import LOAD_EVENT, REPLAY
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.projection.api import SourceMessage

A = [record("a", n, 10 * n) for n in range(1, 6)]


def replaying(records: Sequence[EventRecord]) -> StreamReplayAnswer:
    """A stream's answer to every replay request: `records` in the range asked, in batches
    of two, the last one complete."""

    def answer(request: pb.StreamReplayRequest) -> list[pb.StreamEventsResponse]:
        found = [
            r
            for r in records
            if r.persistence_id == request.persistence_id
            and request.from_seq_nr <= r.seq_nr <= (request.to_seq_nr or 1 << 62)
        ]
        parts = [found[i : i + 2] for i in range(0, len(found), 2)] or [[]]
        return [
            replay_answer(request, part, complete=i == len(parts) - 1)
            for i, part in enumerate(parts)
        ]

    return answer


async def test_a_replay_is_answered_while_the_runner_has_not_taken_the_streams_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The runner asks for the replay in the middle of a batch: the stream's next batches
    # wait for it, and the answer comes after them on the stream.
    query = [batch(pb.EventPath.QUERY, [record("b", n, 100 + n)]) for n in range(1, 4)]
    channel = FakeChannel([Serve([STARTED, *query])], stream_replay=replaying(A))
    source = GrpcConsumer(channel, ConsumerSettings()).source("carts", SLICES)
    send, receive = trio.open_memory_channel[SourceMessage](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, TimestampOffset.start(), send)
        with trio.fail_after(5):
            replayed = await source.replay("Cart|a", 2, 5)
            assert [r.seq_nr for r in replayed] == [2, 3, 4, 5]
            taken = [await receive.receive() for _ in query]  # each batch once, in order
        nursery.cancel_scope.cancel()
    assert [[r.seq_nr for r in records] for records, _ in batches(taken)] == [[1], [2], [3]]
    assert channel.calls == []  # no unary call
    assert source.reconnects == 0


async def test_an_answer_of_other_events_than_asked_fails_the_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def wrong(request: pb.StreamReplayRequest) -> list[pb.StreamEventsResponse]:
        return [replay_answer(request, [A[0], A[0]])]  # seq nr 1 twice

    channel = FakeChannel([Serve([STARTED])], unary={REPLAY: unary_a}, stream_replay=wrong)
    source = GrpcConsumer(channel, ConsumerSettings()).source("carts", SLICES)
    send, _receive = trio.open_memory_channel[SourceMessage](10)

    async def replay() -> None:
        await trio.sleep(1)  # the stream started
        await source.replay("Cart|a", 1, 5)  # cut short: the rest by the unary call

    async with trio.open_nursery() as nursery:
        nursery.start_soon(replay)
        with pytest.raises(ProducerProtocolError, match=r"Cart\|a seq nr 1 after seq nr 1"):
            await source.run(TimestampOffset.start(), send)


def unary_a(request: pb.ReplayRequest) -> pb.ReplayResponse:
    """The unary `Replay` of `A`."""
    found = [r for r in A if request.from_seq_nr <= r.seq_nr <= (request.to_seq_nr or 99)]
    return pb.ReplayResponse(batch=replay_answer(request, found).batch)


async def test_a_caller_that_gave_up_keeps_its_place_in_the_look_ahead_until_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held: list[pb.StreamReplayRequest] = []

    def answer_later(request: pb.StreamReplayRequest) -> list[pb.StreamEventsResponse]:
        held.append(request)
        return []

    channel = FakeChannel([Serve([STARTED])], unary={REPLAY: unary_a}, stream_replay=answer_later)
    settings = ConsumerSettings(replay_look_ahead=1)
    source = GrpcConsumer(channel, settings).source("carts", SLICES)
    send, _receive = trio.open_memory_channel[SourceMessage](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, TimestampOffset.start(), send)
        with trio.move_on_after(1):
            await source.replay("Cart|a", 1, 5)  # never answered: the caller gives up
        assert len(held) == 1
        with trio.fail_after(5):
            replayed = await source.replay("Cart|a", 1, 5)  # the look-ahead is still full
        assert [r.seq_nr for r in replayed] == [1, 2, 3, 4, 5]
        assert [m for m, _ in channel.calls] == [REPLAY]
        nursery.cancel_scope.cancel()


def unavailable_then(
    answer: pb.LoadEventResponse, failures: int
) -> Callable[[pb.LoadEventRequest], pb.LoadEventResponse]:
    """A unary answer that fails with UNAVAILABLE `failures` times, then gives `answer`."""
    calls = 0

    def respond(request: pb.LoadEventRequest) -> pb.LoadEventResponse:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise GrpcUnavailable("connection refused")
        return answer

    return respond


async def test_a_unary_call_is_retried_with_backoff_while_the_producer_is_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    respond = unavailable_then(pb.LoadEventResponse(), failures=3)

    def timed(request: pb.LoadEventRequest) -> pb.LoadEventResponse:
        times.append(trio.current_time())
        return respond(request)

    channel = FakeChannel([], unary={LOAD_EVENT: timed})
    settings = ConsumerSettings(reconnect=NO_JITTER, call_timeout=10.0)
    source = GrpcConsumer(channel, settings).source("carts", SLICES)
    assert await source.load_event("Cart|a", 1) is None
    assert times == [0.0, 0.5, 1.5, 3.5]  # 0.5 s, doubling


async def test_an_unavailable_producer_is_raised_when_the_call_timeout_leaves_no_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    def refused(request: pb.LoadEventRequest) -> pb.LoadEventResponse:
        times.append(trio.current_time())
        raise GrpcUnavailable("connection refused")

    channel = FakeChannel([], unary={LOAD_EVENT: refused})
    settings = ConsumerSettings(reconnect=NO_JITTER, call_timeout=5.0)
    source = GrpcConsumer(channel, settings).source("carts", SLICES)
    with pytest.raises(GrpcUnavailable, match="connection refused"):
        await source.load_event("Cart|a", 1)
    # The next wait (4 s, at 7.5) would pass the deadline at 5.0: raised at 3.5.
    assert times == [0.0, 0.5, 1.5, 3.5]
    assert trio.current_time() == 3.5


async def test_an_in_stream_replay_of_which_nothing_arrives_is_asked_by_the_unary_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def first_batch_only(request: pb.StreamReplayRequest) -> list[pb.StreamEventsResponse]:
        return [replay_answer(request, A[:2], complete=False)]  # then the producer is stuck

    channel = FakeChannel(
        [Serve([STARTED])], unary={REPLAY: unary_a}, stream_replay=first_batch_only
    )
    source = GrpcConsumer(channel, ConsumerSettings(call_timeout=3.0)).source("carts", SLICES)
    send, _receive = trio.open_memory_channel[SourceMessage](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, TimestampOffset.start(), send)
        asked = trio.current_time()
        with trio.fail_after(10):
            replayed = await source.replay("Cart|a", 1, 5)
        assert trio.current_time() - asked == 3.0  # the unary call's deadline, then the call
        nursery.cancel_scope.cancel()
    assert [r.seq_nr for r in replayed] == [1, 2, 3, 4, 5]
    assert [(m, r.from_seq_nr) for m, r in channel.calls] == [(REPLAY, 3)]
