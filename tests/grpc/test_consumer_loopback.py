"""The gRPC consumer against the real producer over loopback: a projection in the consumer's
own SQLite file of a producer's SQLite journal, exactly once, through a producer restart and a
proxy that drops, stalls and resets connections; gaps replayed; lazy payloads; a deadline on
every unary call; one channel shared by several instances."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import pytest
import trio
from consumer_helpers import (
    ENTITIES,
    PRODUCER_SETTINGS,
    FaultyProxy,
    World,
    credits_projection,
    fold,
    wait_for_model,
)

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.grpc import (
    Allow,
    AuthDecision,
    CallInfo,
    ChannelSettings,
    ConsumerSettings,
    Deny,
    GrpcDeadlineExceeded,
    GrpcNotFound,
    GrpcSource,
    GrpcUnauthenticated,
    KeepAlive,
    Reconnect,
    open_grpc_consumer,
)
from fluvial.grpc._consumer_wire import (
    EVENT_TIMESTAMP,
    LATEST_EVENT_TIMESTAMP,
    LOAD_EVENT,
    REPLAY,
)
from fluvial.projection.api import SourceMessage
from producer_fixtures import SOURCE, public_cents

# Quick to notice a dead connection and to come back.
FAST = ConsumerSettings(
    channel=ChannelSettings(keepalive=KeepAlive(interval=0.3, timeout=1.0)),
    reconnect=Reconnect(initial=0.05, maximum=0.5),
    heartbeat_timeout=2.0,
    call_timeout=5.0,
)


async def test_an_exactly_once_projection_over_grpc_equals_the_fold_of_the_producers_events(
    world: World,
) -> None:
    await world.append(10)  # caught up by the query
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        await world.project(consumer)
        await world.append(10, pause=0.01)  # live
        await wait_for_model(world.consumer_file, fold(world.stored))


async def test_the_producer_restarted_mid_stream_the_consumer_ends_with_every_event_once(
    world: World,
) -> None:
    await world.append(5)
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        await world.project(consumer)
        await wait_for_model(world.consumer_file, fold(world.stored))
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(world.append, 10, 0.01)
                await trio.sleep(0.05)
                await world.producer.stop()  # mid-stream, while events are written
                await trio.sleep(0.3)
                await world.producer.start()
        await world.append(3)
        await wait_for_model(world.consumer_file, fold(world.stored))


@pytest.mark.parametrize("fault", ["drop", "stall", "reset mid-batch"])
async def test_through_a_faulty_proxy_the_consumer_recovers_and_loses_and_doubles_nothing(
    world: World, fault: str
) -> None:
    proxy = FaultyProxy(world.producer.port)
    await world.nursery.start(proxy.serve)
    await world.append(40)  # a catch-up of several batches: something to cut
    async with open_grpc_consumer("127.0.0.1", proxy.port, settings=FAST) as consumer:
        await world.project(consumer)
        for _ in range(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(world.append, 5, 0.02)
                await trio.sleep(0.05)
                opened = proxy.opened
                if fault == "drop":
                    proxy.drop()
                elif fault == "stall":
                    proxy.stall()  # found dead by the keep-alive ping (or the heartbeats)
                else:
                    proxy.reset_after(100)
                with trio.fail_after(10):
                    while proxy.opened == opened:  # noqa: ASYNC110 (the consumer reconnects)
                        await trio.sleep(0.05)
        await wait_for_model(world.consumer_file, fold(world.stored))


async def test_without_keep_alive_a_stalled_connection_is_found_by_the_heartbeat_timeout(
    world: World,
) -> None:
    proxy = FaultyProxy(world.producer.port)
    await world.nursery.start(proxy.serve)
    await world.append(5)
    settings = attrs.evolve(FAST, channel=ChannelSettings(keepalive=None), heartbeat_timeout=1.0)
    async with open_grpc_consumer("127.0.0.1", proxy.port, settings=settings) as consumer:
        await world.project(consumer)
        await wait_for_model(world.consumer_file, fold(world.stored))
        proxy.stall()
        await world.append(5)
        with trio.fail_after(10):
            while proxy.opened == 1:  # noqa: ASYNC110 (the consumer reconnects)
                await trio.sleep(0.05)
        await wait_for_model(world.consumer_file, fold(world.stored))


async def test_a_gap_is_replayed_from_the_producer_by_the_unary_call(world: World) -> None:
    await world.append(6)
    # Start past most of the history: the first event each entity shows then is a gap
    # (the previous event is recent, by the first-sight rule of concurrent writers, the
    # default): replayed from seq nr 1, with no look-ahead through the unary Replay, in
    # several parts (test_consumer_replays_loopback.py has the in-stream replays).
    store = world.consumer_journal.offset_store()
    projection = credits_projection()
    await store.register(projection.name, projection.entity_type)
    offset = TimestampOffset(world.stored[-len(ENTITIES) - 1].timestamp)
    await store.set_offset(projection.name, SliceRange.all(), offset)
    await world.producer.stop()
    world.producer.settings = attrs.evolve(PRODUCER_SETTINGS, max_replay_events=2)
    await world.producer.start()
    settings = attrs.evolve(FAST, replay_look_ahead=0)
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=settings) as consumer:
        await world.project(consumer)
        await wait_for_model(world.consumer_file, fold(world.stored))


async def test_a_replay_in_parts_lazy_payloads_and_timestamps_come_from_the_producer(
    world: World,
) -> None:
    await world.producer.stop()
    world.producer.settings = attrs.evolve(PRODUCER_SETTINGS, max_replay_events=2)
    await world.producer.start()
    await world.append(5)
    pid = f"{SOURCE.entity_type}|e0"
    mine = [r for r in world.stored if r.persistence_id == pid]
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        replayed = await source.replay(pid, 1, 5)  # three Replay calls of at most 2 events
        assert [r.seq_nr for r in replayed] == [1, 2, 3, 4, 5]
        assert [public_cents(r) for r in replayed] == [0, 100, 200, None, 400]
        assert await source.replay(pid, 4, 9) == replayed[3:]
        assert await source.replay(pid, 6, 9) == []
        loaded = await source.load_event(pid, 2)
        assert loaded is not None and public_cents(loaded) == 100
        placeholder = await source.load_event(pid, 4)  # negative: dropped by the transformation
        assert placeholder is not None and placeholder.payload is None
        assert await source.load_event(pid, 6) is None
        assert await source.event_timestamp(pid, 3) == mine[2].timestamp
        assert await source.event_timestamp(pid, 6) is None
        assert await source.latest_event_timestamp() == world.stored[-1].timestamp
        one_slice = consumer.source(SOURCE.stream_id, SliceRange(mine[0].slice, mine[0].slice))
        in_it = [r.timestamp for r in world.stored if r.slice == mine[0].slice]
        assert await one_slice.latest_event_timestamp() == max(in_it)
        unknown = consumer.source("no-such-stream", SliceRange.all())
        with pytest.raises(GrpcNotFound, match="no-such-stream"):
            await unknown.load_event(pid, 1)


UNARY_CALLS: list[tuple[str, Callable[[GrpcSource, str], Awaitable[object]]]] = [
    (LOAD_EVENT, lambda source, pid: source.load_event(pid, 1)),
    (EVENT_TIMESTAMP, lambda source, pid: source.event_timestamp(pid, 1)),
    (LATEST_EVENT_TIMESTAMP, lambda source, pid: source.latest_event_timestamp()),
    (REPLAY, lambda source, pid: source.replay(pid, 1, 2)),  # no stream open: the unary call
]


@pytest.mark.parametrize(
    ("method", "call"), UNARY_CALLS, ids=[m.rsplit("/", 1)[1] for m, _ in UNARY_CALLS]
)
async def test_a_unary_call_the_producer_never_answers_fails_at_the_call_timeout(
    world: World, method: str, call: Callable[[GrpcSource, str], Awaitable[object]]
) -> None:
    proxy = FaultyProxy(world.producer.port)
    await world.nursery.start(proxy.serve)
    await world.append(1)
    pid = world.stored[0].persistence_id
    # No keep-alive: only the call's own deadline can end a call on the stalled connection.
    # 1 s: the calls meant to be answered (a connection made, one made again) have it too.
    settings = attrs.evolve(FAST, channel=ChannelSettings(keepalive=None), call_timeout=1.0)
    with trio.fail_after(settings.call_timeout + 4):
        async with open_grpc_consumer("127.0.0.1", proxy.port, settings=settings) as consumer:
            source = consumer.source(SOURCE.stream_id, SliceRange.all())
            await call(source, pid)  # answered: the connection is up
            proxy.stall()  # the producer's answers (and the request) go nowhere now
            asked = trio.current_time()
            with (
                trio.fail_after(settings.call_timeout + 2),
                pytest.raises(GrpcDeadlineExceeded) as raised,
            ):
                await call(source, pid)
            assert trio.current_time() - asked >= settings.call_timeout
            assert raised.value.method == method
            assert "call_timeout" in str(raised.value)
            # Nothing of the abandoned call holds the consumer: once the dead connection is
            # gone, the same call is answered on a new one.
            proxy.drop()
            await call(source, pid)
            assert proxy.opened == 2


async def test_instances_of_several_slice_ranges_share_one_connection(world: World) -> None:
    proxy = FaultyProxy(world.producer.port)
    await world.nursery.start(proxy.serve)
    await world.append(5)
    # The default keep-alive: FAST's, on this busy machine, may find the connection dead.
    settings = attrs.evolve(FAST, channel=ChannelSettings())
    async with open_grpc_consumer("127.0.0.1", proxy.port, settings=settings) as consumer:
        await world.project(consumer, SliceRange(0, 511))
        await world.project(consumer, SliceRange(512, 1023))
        await world.append(5)
        await wait_for_model(world.consumer_file, fold(world.stored))
    assert proxy.opened == 1


async def test_an_unknown_stream_id_fails_the_source_with_not_found(world: World) -> None:
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        source = consumer.source("no-such-stream", SliceRange.all())
        send, _receive = trio.open_memory_channel[SourceMessage](1)
        with pytest.raises(GrpcNotFound, match="no-such-stream"), trio.fail_after(5):
            await source.run(TimestampOffset.start(), send)


async def test_the_consumers_metadata_reaches_the_producers_auth_hook(world: World) -> None:
    def auth(info: CallInfo) -> AuthDecision:
        if info.metadata_value("authorization") == "Bearer good":
            return Allow()
        return Deny.unauthenticated("a bearer token is needed")

    await world.producer.stop()
    world.producer.auth = auth
    await world.producer.start()
    await world.append(2)
    good = attrs.evolve(FAST, metadata=[("authorization", "Bearer good")])
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=good) as consumer:
        await world.project(consumer)
        await wait_for_model(world.consumer_file, fold(world.stored))
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        assert await source.event_timestamp(world.stored[0].persistence_id, 1) is not None
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        send, _receive = trio.open_memory_channel[SourceMessage](1)
        with pytest.raises(GrpcUnauthenticated, match="bearer token"), trio.fail_after(5):
            await source.run(TimestampOffset.start(), send)
        with pytest.raises(GrpcUnauthenticated, match="bearer token"):
            await source.load_event(world.stored[0].persistence_id, 1)
