"""In-stream replays, run by `StreamReplays` as the real stream core decides: each replay's
public events in order with its last batch marked, at most 3 at once with the rest started as
slots free, a newer request of an entity superseding the running one, and a replay whose
journal read fails answered as failed, its slot freed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from fluvial.core.records import EventRecord
from fluvial.core.replication_stream import AppendedCriteria, ProducerStream
from fluvial.core.replication_stream_messages import (
    Init,
    ReplayRequest,
    ReplaysChanged,
    ValidInit,
)
from fluvial.grpc._producer_replays import (
    ReplayAnswer,
    ReplayBatch,
    ReplayFailed,
    ReplaySuperseded,
    StreamReplays,
)
from fluvial.journal.memory import MemoryJournal
from producer_fixtures import INTERNAL, SOURCE, Appender, public_cents


def open_stream() -> ProducerStream[Any, object]:
    stream: ProducerStream[Any, object] = ProducerStream(
        {SOURCE.stream_id: SOURCE.entity_type}, AppendedCriteria()
    )
    answer = stream.receive(
        Init(stream_id=SOURCE.stream_id, slice_min=0, slice_max=1023, criteria=None)
    )
    assert isinstance(answer, ValidInit)
    return stream


def replay(
    stream: ProducerStream[Any, object], correlation_id: int, entity: str, first: int = 1
) -> ReplaysChanged:
    """What the stream core answers to a replay request of `entity`'s events from `first`."""
    answer = stream.receive(
        ReplayRequest(
            correlation_id=correlation_id,
            persistence_id=f"Account|{entity}",
            from_seq_nr=first,
            to_seq_nr=100,
        )
    )
    assert isinstance(answer, ReplaysChanged), answer
    return answer


async def test_replays_send_their_events_in_order_at_most_three_at_once() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    for entity in "abcde":
        await appender.append(entity, *range(1, 8))  # 7 events: batches of 3, 3, 1
    stream = open_stream()
    send, receive = trio.open_memory_channel[ReplayAnswer](0)
    answers: list[ReplayAnswer] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            replays = StreamReplays(nursery, stream, journal, SOURCE, INTERNAL, send, batch_size=3)
            for i, entity in enumerate("abcde", start=1):
                await replays.apply(replay(stream, i, entity))
            await trio.testing.wait_all_tasks_blocked()
            assert [r.correlation_id for r in stream.replays.running] == [1, 2, 3]
            while sum(isinstance(a, ReplayBatch) and a.last for a in answers) < 5:
                answers.append(await receive.receive())
    by_id: dict[int, list[ReplayBatch]] = {}
    started, finished, most = set(), set(), 0
    for answer in answers:
        assert isinstance(answer, ReplayBatch)
        by_id.setdefault(answer.correlation_id, []).append(answer)
        started.add(answer.correlation_id)
        if answer.last:
            finished.add(answer.correlation_id)
        most = max(most, len(started - finished))
    assert most <= 3  # a fourth replay's first batch comes only once one has ended
    for correlation_id, batches in by_id.items():
        assert [len(b.records) for b in batches] == [3, 3, 1]
        assert [b.last for b in batches] == [False, False, True]
        records = [r for b in batches for r in b.records]
        assert [r.seq_nr for r in records] == list(range(1, 8))
        assert {r.persistence_id for r in records} == {f"Account|{'abcde'[correlation_id - 1]}"}
        assert [public_cents(r) for r in records] == [100 * n for n in range(1, 8)]
    assert stream.replays.running == ()


async def test_a_newer_request_supersedes_the_running_replay_of_its_entity() -> None:
    journal = MemoryJournal()
    await Appender(journal).append("a", *range(1, 11))
    stream = open_stream()
    send, receive = trio.open_memory_channel[ReplayAnswer](0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            replays = StreamReplays(nursery, stream, journal, SOURCE, INTERNAL, send, batch_size=2)
            await replays.apply(replay(stream, 1, "a"))
            answers = [await receive.receive()]  # replay 1's first batch; its next one waits
            nursery.start_soon(replays.apply, replay(stream, 2, "a", first=6))
            while not (isinstance(answers[-1], ReplayBatch) and answers[-1].last):
                answers.append(await receive.receive())
    superseded = answers.index(ReplaySuperseded(correlation_id=1))
    after = answers[superseded + 1 :]
    assert all(isinstance(a, ReplayBatch) and a.correlation_id == 2 for a in after)
    seq_nrs = [r.seq_nr for a in after if isinstance(a, ReplayBatch) for r in a.records]
    assert seq_nrs == [6, 7, 8, 9, 10]
    assert stream.replays.running == ()


async def test_a_replay_superseded_as_its_last_batch_is_taken_ends_without_error() -> None:
    # The consumer takes replay 1's last batch (its sender is rescheduled, not run yet) and a
    # newer request of its entity comes before the sender runs again: the core cancels
    # replay 1 (too late to interrupt its send), whose task must then end quietly.
    journal = MemoryJournal()
    await Appender(journal).append("a", 1, 2)
    stream = open_stream()
    send, receive = trio.open_memory_channel[ReplayAnswer](0)
    answers: list[ReplayAnswer] = []

    async def collect() -> None:
        async for answer in receive:
            answers.append(answer)
            if isinstance(answer, ReplayBatch) and answer.correlation_id == 2 and answer.last:
                return

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            replays = StreamReplays(nursery, stream, journal, SOURCE, INTERNAL, send)
            await replays.apply(replay(stream, 1, "a"))
            await trio.testing.wait_all_tasks_blocked()  # replay 1 waits to send its last
            answers.append(receive.receive_nowait())
            nursery.start_soon(collect)
            await replays.apply(replay(stream, 2, "a", first=2))
    assert [(type(a).__name__, a.correlation_id) for a in answers] == [
        ("ReplayBatch", 1),
        ("ReplaySuperseded", 1),
        ("ReplayBatch", 2),
    ]
    last = answers[-1]
    assert isinstance(last, ReplayBatch)
    assert [r.seq_nr for r in last.records] == [2]
    assert stream.replays.running == ()


async def test_a_replay_whose_read_fails_says_so_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    for entity in "abcd":
        await appender.append(entity, 1, 2)
    read = journal.read_events

    async def failing_for_a(pid: str, first: int, last: int, count: int) -> Sequence[EventRecord]:
        if pid == "Account|a":
            raise OSError("the disk is gone")
        return await read(pid, first, last, count)

    monkeypatch.setattr(journal, "read_events", failing_for_a)
    stream = open_stream()
    send, receive = trio.open_memory_channel[ReplayAnswer](0)
    answers: list[ReplayAnswer] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            replays = StreamReplays(nursery, stream, journal, SOURCE, INTERNAL, send)
            for i, entity in enumerate("abcd", start=1):  # d waits for a slot
                await replays.apply(replay(stream, i, entity))
            while sum(isinstance(a, ReplayBatch) and a.last for a in answers) < 3:
                answers.append(await receive.receive())
    failed = [a for a in answers if isinstance(a, ReplayFailed)]
    assert failed == [ReplayFailed(correlation_id=1, message="OSError('the disk is gone')")]
    assert {a.correlation_id for a in answers if isinstance(a, ReplayBatch)} == {2, 3, 4}
    assert stream.replays.running == ()
