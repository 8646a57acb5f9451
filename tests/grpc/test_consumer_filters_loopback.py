"""A consumer's filters over loopback gRPC, against the real producer, each side with its own
SQLite file: an entity included mid-stream arrives whole (its history, then its live events,
exactly once, in order), excluded again nothing more of it arrives; a refused update raises
`FilterUpdateRefused` and the stream goes on with the old filter; every slice-range instance
of the stream id takes an update; the filter survives a restart; an entity first met above
seq nr 1 under a filter is replayed from 1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trio
from consumer_helpers import CONSUMER_REGISTRY, ORDERED_PROJECTION, RestartableProducer, applied

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import (
    ExcludeEntityIds,
    ExcludeRegexEntityIds,
    FilterCriterion,
    IncludeEntityIds,
    IncludeRegexEntityIds,
    InvalidFilterCriterion,
    RemoveIncludeEntityIds,
)
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange, slice_for
from fluvial.grpc import (
    ChannelSettings,
    ConsumerSettings,
    FilterUpdateRefused,
    GrpcConsumer,
    ProducerSettings,
    ProducerStreamSettings,
    Reconnect,
    _consumer_filters,
    open_grpc_consumer,
)
from fluvial.grpc._consumer_filter_wire import wire_criteria
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from fluvial.projection import SourceSettings, serve_projection
from producer_fixtures import ENTITY_TYPE, SOURCE, Appender

STREAM = SOURCE.stream_id
FAST = ConsumerSettings(
    channel=ChannelSettings(),
    reconnect=Reconnect(initial=0.05, maximum=0.5),
    heartbeat_timeout=5.0,
    call_timeout=5.0,
)
# No backtracking (a SQLite journal's finds only duplicates): it would bring an entity's recent
# events again once included, and hide whether the replays under test do their part.
PRODUCER = ProducerSettings(
    stream=ProducerStreamSettings(source=SourceSettings(backtracking_interval=None)),
    heartbeat_interval=0.2,
)
# An entity of each half of the slices (for two slice-range instances).
LOW = "e1"
HIGH = next(f"high-{n}" for n in range(1000) if slice_for(f"{ENTITY_TYPE}|high-{n}") >= 512)
LOW_HALF, HIGH_HALF = SliceRange(0, 511), SliceRange(512, 1023)
# An entity of e4's slice.
E4_SLICE = SliceRange(slice_for(f"{ENTITY_TYPE}|e4"), slice_for(f"{ENTITY_TYPE}|e4"))
TWIN = next(
    f"twin-{n}" for n in range(100_000) if slice_for(f"{ENTITY_TYPE}|twin-{n}") == E4_SLICE.min
)


@attrs.define
class World:
    consumer_file: Path
    consumer_journal: SqliteJournal
    appender: Appender
    producer: RestartableProducer
    nursery: trio.Nursery

    async def append(self, entity: str, count: int) -> None:
        await self.appender.append(entity, *range(count))

    async def wait_for(self, expected: Callable[[dict[str, list[int]]], bool]) -> None:
        """Until the applied events satisfy `expected` (at most 20 s)."""
        with trio.move_on_after(20):
            while not expected(applied(self.consumer_file)):  # noqa: ASYNC110 (another file)
                await trio.sleep(0.05)
        assert expected(applied(self.consumer_file)), applied(self.consumer_file)

    async def wait_until_applied(self, **seq_nrs: int) -> None:
        """Until each entity named has its events 1..n applied; then checks that they came
        exactly once, in order."""
        await self.wait_for(lambda a: all(len(a.get(e, [])) >= n for e, n in seq_nrs.items()))
        await trio.sleep(0.3)  # a duplicate applied late would show now
        now = applied(self.consumer_file)
        for entity, n in seq_nrs.items():
            assert now.get(entity) == list(range(1, n + 1)), (entity, now)

    async def project(
        self, consumer: GrpcConsumer, nursery: trio.Nursery, slices: SliceRange | None = None
    ) -> None:
        store = self.consumer_journal.offset_store()
        await nursery.start(
            lambda task_status: serve_projection(
                consumer,
                CONSUMER_REGISTRY,
                ORDERED_PROJECTION,
                slices,
                offsets=store,
                task_status=task_status,
            )
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    consumer_file = tmp_path / "consumer.db"
    async with (
        open_sqlite_journal(tmp_path / "producer.db") as producer_journal,
        open_sqlite_journal(consumer_file) as consumer_journal,
        trio.open_nursery() as nursery,
    ):
        producer = RestartableProducer(nursery, producer_journal, settings=PRODUCER)
        await producer.start()
        yield World(consumer_file, consumer_journal, Appender(producer_journal), producer, nursery)
        nursery.cancel_scope.cancel()


async def test_an_entity_included_mid_stream_arrives_whole_and_excluded_again_stops(
    world: World,
) -> None:
    await world.append("e0", 3)
    await world.append(LOW, 3)
    store = world.consumer_journal.offset_store()
    async with open_grpc_consumer(
        "127.0.0.1",
        world.producer.port,
        settings=FAST,
        filters={STREAM: ExcludeEntityIds({LOW})},
        filter_store=store,
    ) as consumer:
        await world.project(consumer, world.nursery)
        await world.append(LOW, 2)  # excluded: not sent
        await world.wait_until_applied(e0=3)
        assert LOW not in applied(world.consumer_file)
        # Included by id from seq nr 1: the producer replays its 5 events in the stream (no
        # event of it comes live to make the consumer ask), then its live events follow.
        after = await consumer.update_filter(STREAM, IncludeEntityIds({LOW}, seq_nr=1))
        assert after == Filter.of([ExcludeEntityIds({LOW}), IncludeEntityIds({LOW}, seq_nr=1)])
        await world.wait_until_applied(e0=3, **{LOW: 5})
        await world.append(LOW, 2)
        await world.wait_until_applied(e0=3, **{LOW: 7})
        # Excluded again: nothing more of it, while the others' events (and offsets) go on.
        await consumer.update_filter(STREAM, RemoveIncludeEntityIds({LOW}))
        await world.append(LOW, 3)
        await world.append("e0", 2)
        await world.wait_until_applied(e0=5, **{LOW: 7})
        offsets = await store.offsets(ORDERED_PROJECTION.name)
        assert max(o.timestamp for o in offsets.values()) > 0
        assert await store.load_consumer_filter(STREAM) == Filter.of(ExcludeEntityIds({LOW}))


async def test_a_refused_update_raises_and_the_stream_goes_on_with_the_old_filter(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bad regex never leaves the consumer: the criterion refuses it when built.
    with pytest.raises(InvalidFilterCriterion, match="IncludeRegexEntityIds"):
        IncludeRegexEntityIds({"(unclosed"})

    # A producer may refuse what the consumer took (another version's rules): here, the wire
    # carries a bad regex in place of the consumer's good one.
    def bad_regex_on_the_wire(criteria: tuple[FilterCriterion, ...]) -> list[pb.FilterCriterion]:
        wire = wire_criteria(criteria)
        for criterion in wire:
            if criterion.include_regexes is not None:
                criterion.include_regexes.regexes = ["(unclosed"]
        return wire

    monkeypatch.setattr(_consumer_filters, "wire_criteria", bad_regex_on_the_wire)
    store = world.consumer_journal.offset_store()
    initial = ExcludeEntityIds({LOW})
    async with open_grpc_consumer(
        "127.0.0.1",
        world.producer.port,
        settings=FAST,
        filters={STREAM: initial},
        filter_store=store,
    ) as consumer:
        await world.project(consumer, world.nursery)
        await world.append("e0", 2)
        await world.wait_until_applied(e0=2)
        good = IncludeRegexEntityIds({"e[0-9]"})
        with pytest.raises(FilterUpdateRefused) as refused:
            await consumer.update_filter(STREAM, [IncludeEntityIds({"x"}), good])
        assert refused.value.criterion == good
        assert refused.value.criterion_index == 1
        assert refused.value.stream_id == STREAM
        assert refused.value.status_code == 3
        assert "unclosed" in refused.value.reason
        assert await consumer.filter(STREAM) == Filter.of(initial)
        assert await store.load_consumer_filter(STREAM) == Filter.of(initial)
        # The stream goes on, with the old filter: e0 arrives, LOW does not.
        await world.append(LOW, 2)
        await world.append("e0", 2)
        await world.wait_until_applied(e0=4)
        assert LOW not in applied(world.consumer_file)


async def test_every_slice_range_instance_of_the_stream_id_takes_the_update(
    world: World,
) -> None:
    await world.append(LOW, 2)
    await world.append(HIGH, 2)
    exclude_all = ExcludeRegexEntityIds({".*"})
    async with open_grpc_consumer(
        "127.0.0.1", world.producer.port, settings=FAST, filters={STREAM: exclude_all}
    ) as consumer:
        await world.project(consumer, world.nursery, LOW_HALF)
        await world.project(consumer, world.nursery, HIGH_HALF)
        assert len(consumer.filters._open[STREAM]) == 2
        await consumer.update_filter(STREAM, IncludeEntityIds({LOW, HIGH}, seq_nr=1))
        await world.append(LOW, 1)
        await world.append(HIGH, 1)
        await world.wait_until_applied(**{LOW: 3, HIGH: 3})


async def test_the_stored_filter_holds_after_a_restart(world: World) -> None:
    store = world.consumer_journal.offset_store()
    for run in range(2):
        # The second run gives no filter: the stored one (with the update) holds.
        initial = {STREAM: ExcludeEntityIds({"e2"})} if run == 0 else None
        async with (
            open_grpc_consumer(
                "127.0.0.1", world.producer.port, settings=FAST, filters=initial, filter_store=store
            ) as consumer,
            trio.open_nursery() as nursery,
        ):
            await world.project(consumer, nursery)
            if run == 0:
                await consumer.update_filter(STREAM, ExcludeEntityIds({"e3"}))
            await world.append("e2", 1)
            await world.append("e3", 1)
            await world.append("e0", 1)
            await world.wait_until_applied(e0=run + 1)
            assert await consumer.filter(STREAM) == Filter.of(ExcludeEntityIds({"e2", "e3"}))
            nursery.cancel_scope.cancel()
    now = applied(world.consumer_file)
    assert "e2" not in now and "e3" not in now


async def test_an_entity_first_met_above_seq_nr_1_under_a_filter_is_replayed_from_1(
    world: World,
) -> None:
    # QUERY_IN_COMMIT_ORDER (right for this SQLite producer without filters) would take e4,
    # first met by the query at seq nr 4, as seen from there: the filter makes it replay. The
    # instance reads e4's slice only, where TWIN's event moves the offset past e4's first 3.
    settings = attrs.evolve(FAST, first_sight=FirstSight.QUERY_IN_COMMIT_ORDER)
    store = world.consumer_journal.offset_store()
    await world.append("e4", 3)
    await world.append(TWIN, 1)
    async with (
        open_grpc_consumer(
            "127.0.0.1",
            world.producer.port,
            settings=settings,
            filters={STREAM: ExcludeEntityIds({"e4"})},
            filter_store=store,
        ) as consumer,
        trio.open_nursery() as nursery,
    ):
        await world.project(consumer, nursery, E4_SLICE)
        await world.wait_until_applied(**{TWIN: 1})
        # Included with no replay now (seq nr 0): "only when needed".
        await consumer.update_filter(STREAM, IncludeEntityIds({"e4"}))
        nursery.cancel_scope.cancel()
    await world.append("e4", 1)  # while the consumer is down: the query brings it
    async with (
        open_grpc_consumer(
            "127.0.0.1", world.producer.port, settings=settings, filter_store=store
        ) as consumer,
        trio.open_nursery() as nursery,
    ):
        await world.project(consumer, nursery, E4_SLICE)
        await world.wait_until_applied(e4=4, **{TWIN: 1})
        nursery.cancel_scope.cancel()


async def test_offsets_move_over_what_the_filter_leaves_out(world: World) -> None:
    """While the filter leaves out everything, no event arrives, yet the producer's progress
    moves every slice's offset to where its query has come: a restart does not read the
    stream again from the start."""
    store = world.consumer_journal.offset_store()
    projection = attrs.evolve(ORDERED_PROJECTION, quiet_slices_every=0.05)
    for n in range(20):
        await world.append(f"x{n}", 2)
    (last,) = await world.appender.append("x0", 1)
    async with (
        open_grpc_consumer(
            "127.0.0.1",
            world.producer.port,
            settings=FAST,
            filters={STREAM: ExcludeRegexEntityIds({"x.*"})},
            filter_store=store,
        ) as consumer,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            lambda task_status: serve_projection(
                consumer,
                CONSUMER_REGISTRY,
                projection,
                offsets=store,
                task_status=task_status,
            )
        )

        async def resume_timestamp() -> int:
            tracker = await store.load(projection.name, SliceRange.all(), window=1)
            return tracker.resume_offset().timestamp

        database = world.consumer_journal.database
        with trio.move_on_after(10):  # re-checked after each commit to the consumer's file
            while True:
                seen = database.commit_count()
                if await resume_timestamp() >= last.timestamp:
                    break
                await database.wait_for_commit(seen)
        assert await resume_timestamp() == last.timestamp
        nursery.cancel_scope.cancel()
    assert applied(world.consumer_file) == {}
