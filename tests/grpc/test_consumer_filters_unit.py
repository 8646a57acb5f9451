"""`ConsumerFilters` (the consumer's filters per stream id) without a network: its open streams
are fakes that answer each `FilterUpdate` as the test says; its store is a memory store. And a
`GrpcSource` on the fake channel: a stream reopened after an update carries it in its Init."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from consumer_fakes import NO_JITTER, SLICES, STARTED, FakeChannel, Serve

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import ExcludeEntityIds, IncludeEntityIds, IncludeTopics
from fluvial.core.first_sight import FirstSight
from fluvial.core.offsets import TimestampOffset
from fluvial.grpc import ConsumerSettings, FilterUpdateRefused, GrpcConsumer
from fluvial.grpc._consumer_filter_wire import wire_criteria
from fluvial.grpc._consumer_filters import ConsumerFilters, OpenStream
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.memory import MemoryJournal
from fluvial.journal.memory._offset_store import MemoryOffsetStore
from fluvial.projection.api import Batch

STREAM = "carts"
Answer = Callable[[pb.FilterUpdate], pb.StreamEventsResponse | None]


def ack(update: pb.FilterUpdate) -> pb.StreamEventsResponse:
    return pb.StreamEventsResponse(
        filter_update_ack=pb.FilterUpdateAck(correlation_id=update.correlation_id)
    )


def refuse(update: pb.FilterUpdate) -> pb.StreamEventsResponse:
    refused = pb.FilterUpdateRefused(
        correlation_id=update.correlation_id, status_code=3, message="no", criterion_index=0
    )
    return pb.StreamEventsResponse(filter_update_refused=refused)


class FakeStream:
    """Records what is sent; answers each update with `answer` (None: never), as the
    stream's receive loop would hand it over."""

    def __init__(self, filters: ConsumerFilters, answer: Answer, nursery: trio.Nursery) -> None:
        self.sent: list[pb.FilterUpdate] = []
        self.answer = answer
        self.nursery = nursery
        self.opened: OpenStream = filters.open(STREAM, self)
        self.opened.init_sent()

    async def send(self, message: pb.StreamEventsRequest) -> None:
        assert message.filter_update is not None
        self.sent.append(message.filter_update)
        response = self.answer(message.filter_update)
        if response is not None:
            kind = "filter_update_ack" if response.filter_update_ack else "filter_update_refused"
            value = response.filter_update_ack or response.filter_update_refused
            self.nursery.start_soon(self._hand_over, kind, value)

    async def _hand_over(self, kind: str, value: object) -> None:
        await trio.lowlevel.checkpoint()
        assert self.opened.answered(kind, value)


@pytest.fixture
def store() -> MemoryOffsetStore:
    return MemoryOffsetStore(MemoryJournal())


async def test_an_update_is_stored_sent_to_every_open_stream_and_awaited(
    store: MemoryOffsetStore,
) -> None:
    filters = ConsumerFilters({STREAM: ExcludeEntityIds({"a"})}, store)
    await filters.load(STREAM)
    async with trio.open_nursery() as nursery:
        streams = [FakeStream(filters, ack, nursery) for _ in range(2)]
        update = IncludeEntityIds({"a"}, seq_nr=1)
        after = await filters.update(STREAM, update)
        assert after == Filter.of([ExcludeEntityIds({"a"}), update])
        assert await store.load_consumer_filter(STREAM) == after
        for stream in streams:
            [sent] = stream.sent
            assert sent.criteria == wire_criteria((update,))
            assert stream.opened.filter == after
        # Fresh correlation ids per stream, and an update that changes nothing is not sent.
        await filters.update(STREAM, IncludeTopics({"x"}))
        assert [u.correlation_id for u in streams[0].sent] == [1, 2]
        await filters.update(STREAM, IncludeTopics({"x"}))
        assert len(streams[0].sent) == 2


async def test_a_refusal_puts_the_filter_back_and_reopens_the_streams_that_took_it(
    store: MemoryOffsetStore,
) -> None:
    filters = ConsumerFilters({STREAM: ExcludeEntityIds({"a"})}, store)
    before = await filters.load(STREAM)
    async with trio.open_nursery() as nursery:
        took_it = FakeStream(filters, ack, nursery)
        refused_it = FakeStream(filters, refuse, nursery)
        update = IncludeTopics({"a/#"})
        with pytest.raises(FilterUpdateRefused) as refused:
            await filters.update(STREAM, update)
    assert (refused.value.criterion, refused.value.criterion_index) == (update, 0)
    assert (refused.value.reason, refused.value.status_code) == ("no", 3)
    assert filters.filter(STREAM) == before
    assert await store.load_consumer_filter(STREAM) == before
    assert took_it.opened.reopen_scope.cancel_called
    assert not refused_it.opened.reopen_scope.cancel_called


async def test_a_stream_that_ends_before_it_answers_counts_as_taking_the_update() -> None:
    filters = ConsumerFilters()
    async with trio.open_nursery() as nursery:
        silent = FakeStream(filters, lambda update: None, nursery)

        async def end_it() -> None:
            await trio.testing.wait_all_tasks_blocked()
            filters.close(STREAM, silent.opened)

        nursery.start_soon(end_it)
        with trio.fail_after(5):
            after = await filters.update(STREAM, ExcludeEntityIds({"b"}))
    assert filters.filter(STREAM) == after == Filter.of(ExcludeEntityIds({"b"}))


async def test_a_stream_opened_during_an_update_carries_it_in_its_init() -> None:
    filters = ConsumerFilters()
    async with trio.open_nursery() as nursery:
        slow = FakeStream(filters, lambda update: None, nursery)
        nursery.start_soon(filters.update, STREAM, ExcludeEntityIds({"c"}))
        await trio.testing.wait_all_tasks_blocked()
        late = FakeStream(filters, ack, nursery)  # the update waits for `slow`'s answer
        assert late.opened.filter == Filter.of(ExcludeEntityIds({"c"}))
        filters.close(STREAM, slow.opened)
    assert late.sent == []


async def test_the_stored_filter_holds_over_the_initial_one_and_sets_the_first_sight_rule(
    store: MemoryOffsetStore,
) -> None:
    otherwise = FirstSight.QUERY_IN_COMMIT_ORDER
    await store.save_consumer_filter(STREAM, Filter())  # emptied once: it had a filter
    filters = ConsumerFilters({STREAM: ExcludeEntityIds({"x"}), "other": Filter()}, store)
    assert filters.first_sight(STREAM, otherwise) is otherwise  # not loaded yet
    assert await filters.load(STREAM) == Filter()
    assert filters.first_sight(STREAM, otherwise) is FirstSight.REPLAY_FROM_FIRST
    assert await filters.load("other") == Filter()
    assert filters.first_sight("other", otherwise) is otherwise
    await filters.update("other", ExcludeEntityIds({"y"}))
    assert filters.first_sight("other", otherwise) is FirstSight.REPLAY_FROM_FIRST


async def test_a_stream_reopened_after_an_update_carries_the_filter_in_its_init(
    autojump_clock: trio.testing.MockClock,
) -> None:
    channel = FakeChannel([Serve((STARTED,), then="break"), Serve()])
    consumer = GrpcConsumer(channel, ConsumerSettings(reconnect=NO_JITTER))
    source = consumer.source(STREAM, SLICES)
    send, _receive = trio.open_memory_channel[Batch](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, TimestampOffset.start(), send)
        await trio.sleep(0.1)  # broken, waiting 0.5 s to reopen: no stream is open
        update = ExcludeEntityIds({"d"})
        await consumer.update_filter(STREAM, update)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [list(init.filter) for init in channel.inits] == [[], wire_criteria((update,))]
