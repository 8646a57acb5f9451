"""A client that floods a stream with replay requests over real loopback: the producer runs 3
of them, lets `ProducerSettings.max_queued_replays` wait, and answers every other request of a
new entity at once with a `StreamReplayAbandoned` (QUEUE_FULL), that request alone: the
admitted ones are answered, a replacement of a waiting one takes its place and no new one, the
stream goes on serving events, and another stream's queue is its own. The producer journal's
reads of the admitted entities (`read_events`: only replays use it) wait until the test
releases them, so that the queue is full while the flood comes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import attrs
import pytest
import trio
from producer_service_helpers import (
    QUIET,
    EventsStream,
    events_stream,
    init_request,
    kind,
    producer_channel,
    receive_events,
    records_of,
)

from fluvial.core.errors import UsageError
from fluvial.core.records import EventRecord
from fluvial.grpc import ProducerSettings
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.memory import MemoryJournal
from producer_fixtures import Appender

BOUND = 2
FLOOD = 200
ADMITTED = [f"Account|x{i}" for i in range(3 + BOUND)]  # 3 run, BOUND wait
QUEUE_FULL = pb.ReplayAbandonReason.QUEUE_FULL


class HeldReads:
    """The journal's `read_events`, of which those of `ADMITTED` wait for `released`."""

    def __init__(self, journal: MemoryJournal, monkeypatch: pytest.MonkeyPatch) -> None:
        self._read = journal.read_events
        monkeypatch.setattr(journal, "read_events", self.read_events)
        self.released = trio.Event()
        self.held = 0
        self._enough = 0
        self._reached = trio.Event()

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        if persistence_id in ADMITTED and not self.released.is_set():
            self.held += 1
            if self.held >= self._enough:
                self._reached.set()
            await self.released.wait()
        return await self._read(persistence_id, from_seq_nr, to_seq_nr, limit)

    async def wait_held(self, count: int) -> None:
        self._enough, self._reached = count, trio.Event()
        if self.held < count:
            with trio.fail_after(10):
                await self._reached.wait()


async def ask(stream: EventsStream, correlation_id: int, pid: str) -> None:
    await stream.send(pb.StreamEventsRequest(replay=pb.StreamReplayRequest(correlation_id, pid, 1)))


@attrs.define
class Answers:
    """What one stream received, by kind: abandonments in order, REPLAY events and whether
    complete by correlation id, the pids of LIVE events."""

    abandoned: list[tuple[int, pb.ReplayAbandonReason]] = attrs.field(factory=list)
    replayed: dict[int, list[int]] = attrs.field(factory=lambda: defaultdict(list))
    complete: set[int] = attrs.field(factory=set)
    live: set[str] = attrs.field(factory=set)

    async def receive_until(self, stream: EventsStream, done: Callable[[], object]) -> None:
        with trio.fail_after(10):
            while not done():
                message = await stream.receive()
                if kind(message) == "replay_abandoned":
                    assert message is not None and message.replay_abandoned is not None
                    abandoned = message.replay_abandoned
                    self.abandoned.append((abandoned.correlation_id, abandoned.reason))
                elif kind(message) == "batch":
                    assert message is not None and message.batch is not None
                    batch = message.batch
                    records = records_of(batch)
                    if batch.path == pb.EventPath.REPLAY:
                        assert batch.replay is not None
                        part = batch.replay
                        self.replayed[part.correlation_id] += [r.seq_nr for r in records]
                        if part.complete:
                            self.complete.add(part.correlation_id)
                    elif batch.path == pb.EventPath.LIVE:
                        self.live.update(r.persistence_id for r in records)
                else:
                    assert kind(message) == "heartbeat", message


async def test_a_flood_of_replay_requests_is_refused_past_the_bound_and_the_streams_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    for pid in ADMITTED:
        await appender.append(pid.removeprefix("Account|"), 1, 2)
    await appender.append("b", 1)
    reads = HeldReads(journal, monkeypatch)
    settings = attrs.evolve(QUIET, max_queued_replays=BOUND)
    async with (
        producer_channel(journal, settings=settings) as channel,
        events_stream(channel, init_request()) as flooded,
        events_stream(channel, init_request()) as other,
    ):
        stored = 2 * len(ADMITTED) + 1
        await receive_events(flooded, stored)
        await receive_events(other, stored)
        for correlation_id, pid in enumerate(ADMITTED, start=1):
            await ask(flooded, correlation_id, pid)
        await reads.wait_held(3)  # 3 run; the other BOUND wait
        # The flood: entities of their own (none stored), far beyond the bound.
        for n in range(FLOOD):
            await ask(flooded, 100 + n, f"Account|ghost{n}")
        # A new request of a waiting entity replaces it in its place: no new place.
        await ask(flooded, 99, ADMITTED[-1])
        await ask(flooded, 1000, "Account|late")
        await appender.append("live", 1)
        # The other stream's queue is its own: its 3 run, and a fourth waits, admitted.
        for correlation_id, pid in enumerate(ADMITTED[:3], start=1):
            await ask(other, correlation_id, pid)
        await ask(other, 4, "Account|b")

        answers = Answers()
        flood_answered = FLOOD + 2  # the flood, the replaced request, the late one
        await answers.receive_until(
            flooded, lambda: len(answers.abandoned) == flood_answered and answers.live
        )
        refused = [(100 + n, QUEUE_FULL) for n in range(FLOOD)]
        superseded = (len(ADMITTED), pb.ReplayAbandonReason.SUPERSEDED)
        assert answers.abandoned == [*refused, superseded, (1000, QUEUE_FULL)]
        assert answers.live == {"Account|live"}  # the stream serves events meanwhile
        assert not answers.replayed  # the admitted ones wait for their reads

        await reads.wait_held(6)  # the other stream's 3
        reads.released.set()
        admitted = {1, 2, 3, 4, 99}
        await answers.receive_until(flooded, lambda: answers.complete == admitted)
        assert dict(answers.replayed) == {c: [1, 2] for c in admitted}  # none of the others
        assert len(answers.abandoned) == flood_answered  # nothing more was given up

        theirs = Answers()
        await theirs.receive_until(other, lambda: theirs.complete == {1, 2, 3, 4} and theirs.live)
        assert dict(theirs.replayed) == {1: [1, 2], 2: [1, 2], 3: [1, 2], 4: [1]}
        assert theirs.abandoned == []
        assert theirs.live == {"Account|live"}


def test_the_queue_bound_is_a_producer_setting_of_at_least_0() -> None:
    assert ProducerSettings().max_queued_replays == 32
    assert ProducerSettings(max_queued_replays=0).max_queued_replays == 0
    for bad in (-1, 2.5, True):
        with pytest.raises(UsageError, match="max_queued_replays must be an int >= 0"):
            ProducerSettings(max_queued_replays=bad)  # type: ignore[arg-type]
