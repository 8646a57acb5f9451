"""Replays of gaps against the real producer over loopback: in-stream on the open stream
(no unary `Replay` asked: the producer's auth hook counts the calls), exactly once and in
order; the unary call when the look-ahead is full, when the stream breaks mid-replay (asked
from where the stream's answer stopped, retried while the producer restarts), when the
producer says it abandoned the replay (superseded by a newer request of the entity, refused
by its full queue, or its read failed). The producer's journal reads of one entity
(`read_events`: only replays use them) can be held or made to fail, so that each case happens
when the test says."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import pytest
import trio
from consumer_helpers import (
    CONSUMER_REGISTRY,
    ORDERED_PROJECTION,
    PRODUCER_SETTINGS,
    RestartableProducer,
    applied,
)

from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.grpc import (
    Allow,
    CallInfo,
    ChannelSettings,
    ConsumerSettings,
    GrpcSource,
    KeepAlive,
    Reconnect,
    open_grpc_consumer,
)
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from fluvial.projection._runner import serve_projection
from fluvial.projection.api import Batch
from producer_fixtures import INTERNAL, SOURCE, Appender, public_cents

FAST = ConsumerSettings(
    channel=ChannelSettings(keepalive=KeepAlive(interval=0.3, timeout=1.0)),
    reconnect=Reconnect(initial=0.05, maximum=0.2),
    heartbeat_timeout=2.0,
    call_timeout=5.0,
)
PID = f"{SOURCE.entity_type}|e0"


class ReadGate:
    """The producer journal's `read_events`, counted, of which the reads named in `hold`
    (1-based) wait for `released` and those in `fail` raise."""

    def __init__(self, journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch) -> None:
        self._read = journal.read_events
        monkeypatch.setattr(journal, "read_events", self.read_events)
        self.hold: set[int] = set()
        self.fail: set[int] = set()
        self.held = 0
        self.released = trio.Event()
        self.reads: list[tuple[str, int]] = []

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, max_count: int
    ) -> list[EventRecord]:
        self.reads.append((persistence_id, from_seq_nr))
        if len(self.reads) in self.fail:
            raise OSError("the disk is gone")
        if len(self.reads) in self.hold:
            self.held += 1
            await self.released.wait()
        return list(await self._read(persistence_id, from_seq_nr, to_seq_nr, max_count))

    async def wait_held(self, count: int = 1) -> None:
        with trio.fail_after(10):
            while self.held < count:  # noqa: ASYNC110 (another task's read)
                await trio.sleep(0.01)


@attrs.define
class World:
    journal: SqliteJournal
    consumer_file: Path
    producer: RestartableProducer
    gate: ReadGate
    calls: Counter[str]
    nursery: trio.Nursery
    stored: list[EventRecord] = attrs.field(factory=list)

    async def append(self, entities: int, rounds: int) -> None:
        """`rounds` events for each of `entities` entities; every 4th negative (a placeholder
        on the wire)."""
        appender = Appender(self.journal)
        for round_ in range(rounds):
            for index in range(entities):
                amount = -1 if (round_ + index) % 4 == 3 else round_ + index
                self.stored.extend(await appender.append(f"e{index}", amount))

    def of(self, pid: str, first: int, last: int) -> list[tuple[int, int | None]]:
        """`pid`'s stored events `first..last` as a replay brings them: (seq nr, cents),
        None for a placeholder."""
        expected: list[tuple[int, int | None]] = []
        for record in self.stored:
            if record.persistence_id == pid and first <= record.seq_nr <= last:
                assert record.payload is not None
                amount = INTERNAL.decode(record.payload, persistence_id=pid, seq_nr=0).amount
                expected.append((record.seq_nr, amount * 100 if amount >= 0 else None))
        return expected


def replayed(records: Sequence[EventRecord]) -> list[tuple[int, int | None]]:
    return [(r.seq_nr, public_cents(r)) for r in records]


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    calls: Counter[str] = Counter()

    def count(call: CallInfo) -> Allow:
        calls[call.method.rsplit("/", 1)[-1]] += 1
        return Allow()

    async with (
        open_sqlite_journal(tmp_path / "producer.db") as journal,
        trio.open_nursery() as nursery,
    ):
        settings = attrs.evolve(
            PRODUCER_SETTINGS, stream=attrs.evolve(PRODUCER_SETTINGS.stream, batch_size=2)
        )
        producer = RestartableProducer(nursery, journal, settings=settings, auth=count)
        await producer.start()
        gate = ReadGate(journal, monkeypatch)
        yield World(journal, tmp_path / "consumer.db", producer, gate, calls, nursery)
        nursery.cancel_scope.cancel()


async def running(world: World, source: GrpcSource) -> None:
    """Run `source` in the world's nursery, its batches taken and dropped."""
    send, receive = trio.open_memory_channel[Batch](0)

    async def drain() -> None:
        async for _ in receive:
            pass

    world.nursery.start_soon(drain)
    await world.nursery.start(source.run, TimestampOffset.start(), send)


async def test_a_gap_is_replayed_on_the_stream_exactly_once_and_in_order(world: World) -> None:
    await world.append(entities=4, rounds=7)
    # Resume past most of the history: the first event each entity shows then is a gap (its
    # previous event is recent, by the default first-sight rule), replayed from seq nr 1.
    async with open_sqlite_journal(world.consumer_file) as consumer_journal:
        store = consumer_journal.offset_store()
        await store.register(ORDERED_PROJECTION.name, ORDERED_PROJECTION.entity_type)
        offset = TimestampOffset(world.stored[-5].timestamp)
        await store.set_offset(ORDERED_PROJECTION.name, SliceRange.all(), offset)
        async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
            await world.nursery.start(
                lambda task_status: serve_projection(
                    consumer,
                    CONSUMER_REGISTRY,
                    ORDERED_PROJECTION,
                    offsets=store,
                    task_status=task_status,
                )
            )
            expected = {
                f"e{n}": [s for s, cents in world.of(f"Account|e{n}", 1, 7) if cents is not None]
                for n in range(4)
            }
            with trio.move_on_after(20):
                while applied(world.consumer_file) != expected:  # noqa: ASYNC110 (another file)
                    await trio.sleep(0.05)
            await trio.sleep(0.3)  # an event applied twice would show now
    assert applied(world.consumer_file) == expected
    assert world.calls["Replay"] == 0
    assert world.gate.reads  # the producer read them for the stream's replays


async def test_a_replay_beyond_the_look_ahead_is_the_unary_call(world: World) -> None:
    await world.append(entities=2, rounds=5)
    world.gate.hold = {1}
    settings = attrs.evolve(FAST, replay_look_ahead=1)
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=settings) as consumer:
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        await running(world, source)
        answers: dict[str, Sequence[EventRecord]] = {}

        async def replay(pid: str) -> None:
            answers[pid] = await source.replay(pid, 1, 5)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replay, PID)  # in-stream: held at the producer
                await world.gate.wait_held()
                await replay("Account|e1")  # the look-ahead is full: the unary call
                assert world.calls["Replay"] == 1
                world.gate.released.set()
    assert replayed(answers[PID]) == world.of(PID, 1, 5)
    assert replayed(answers["Account|e1"]) == world.of("Account|e1", 1, 5)
    assert world.calls["Replay"] == 1
    assert source.reconnects == 0


async def test_a_stream_broken_mid_replay_loses_and_doubles_nothing(world: World) -> None:
    await world.append(entities=1, rounds=6)
    # Pages of 2: the first batch (seq nrs 1, 2) goes once the second page is read; the
    # third page's read is held, and the producer stops then.
    world.gate.hold = {3}
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        await running(world, source)
        answer: list[Sequence[EventRecord]] = []

        async def replay() -> None:
            answer.append(await source.replay(PID, 1, 6))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replay)
                await world.gate.wait_held()
                await trio.sleep(0.3)  # the first batch travels
                await world.producer.stop()  # the stream breaks: the unary call finds no one
                await trio.sleep(0.3)
                await world.producer.start()  # ... and then the producer again
    assert replayed(answer[0]) == world.of(PID, 1, 6)
    assert world.calls["Replay"] == 1
    # The stream's pages 1, 3, 5 (held); then the unary call's, after what the stream brought.
    assert world.gate.reads == [(PID, 1), (PID, 3), (PID, 5), (PID, 3), (PID, 5)]


async def test_a_superseded_replay_is_asked_again_by_the_unary_call(world: World) -> None:
    await world.append(entities=1, rounds=5)
    world.gate.hold = {1}
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        await running(world, source)
        answers: dict[int, Sequence[EventRecord]] = {}

        async def replay(first: int) -> None:
            answers[first] = await source.replay(PID, first, 5)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replay, 1)  # held at the producer
                await world.gate.wait_held()
                # A newer request of the entity: the producer replaces the running one, and
                # says so on the stream.
                await replay(3)
    assert replayed(answers[1]) == world.of(PID, 1, 5)
    assert replayed(answers[3]) == world.of(PID, 3, 5)
    assert world.calls["Replay"] == 1
    assert source.reconnects == 0


async def test_a_replay_the_producer_failed_to_read_is_asked_again_by_the_unary_call(
    world: World,
) -> None:
    await world.append(entities=1, rounds=5)
    world.gate.fail = {1}
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        await running(world, source)
        with trio.fail_after(10):
            answer = await source.replay(PID, 1, 5)
    assert replayed(answer) == world.of(PID, 1, 5)
    assert world.calls["Replay"] == 1
    assert source.reconnects == 0  # the stream went on


async def test_a_replay_the_full_queue_refused_is_asked_again_by_the_unary_call(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fluvial.grpc.consumer")
    await world.producer.stop()
    world.producer.settings = attrs.evolve(world.producer.settings, max_queued_replays=0)
    await world.producer.start()
    await world.append(entities=4, rounds=5)
    world.gate.hold = {1, 2, 3}  # the 3 replays the producer runs at once
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=FAST) as consumer:
        source = consumer.source(SOURCE.stream_id, SliceRange.all())
        await running(world, source)
        answers: dict[str, Sequence[EventRecord]] = {}

        async def replay(pid: str) -> None:
            answers[pid] = await source.replay(pid, 1, 5)

        # Well within call_timeout: the refusal is answered at once, not given up on.
        with trio.fail_after(FAST.call_timeout / 2):
            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(replay, f"Account|e{n}")
                await world.gate.wait_held(3)
                await replay("Account|e3")  # in-stream, refused: no place to wait
                assert world.calls["Replay"] == 1
                world.gate.released.set()
    for n in range(4):
        assert replayed(answers[f"Account|e{n}"]) == world.of(f"Account|e{n}", 1, 5)
    assert world.calls["Replay"] == 1  # only the refused one
    assert source.reconnects == 0
    [refused] = [r.getMessage() for r in caplog.records if "QUEUE_FULL" in r.getMessage()]
    assert "Account|e3 seq nrs 1..5 abandoned (QUEUE_FULL: 0 replays" in refused
