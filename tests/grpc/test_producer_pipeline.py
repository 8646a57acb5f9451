"""The producer's stream pipeline without gRPC, on a real SQLite file and the memory journal:
catch-up then live, the public form of each event, placeholders, batching, and the lookups
of single entities (replay, load one event, its timestamp)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.replication_stream_errors import RefusalReason, RemoteStreamError
from fluvial.core.replication_stream_messages import SliceOffset
from fluvial.grpc import EventProducerSource, ProducerStreamSettings
from fluvial.grpc._producer_lookups import (
    event_timestamp,
    load_event,
    replay_batches,
    replay_events,
)
from fluvial.grpc._producer_stream import run_producer_stream
from fluvial.journal.api import Journal
from fluvial.journal.memory import MemoryJournal
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import Batch
from producer_fixtures import (
    ENTITY_TYPE,
    INTERNAL,
    PUBLIC,
    SOURCE,
    Added,
    Appender,
    CountingJournal,
    Credited,
    Received,
    public_cents,
    valid_init,
)

QUERY, LIVE, REPLAY = EnvelopeSource.QUERY, EnvelopeSource.LIVE, EnvelopeSource.REPLAY
# The query reads at each commit (no follow_delay): these tests time the batching.
QUIET = ProducerStreamSettings(source=SourceSettings(backtracking_interval=None, follow_delay=0))


@pytest.fixture(params=["sqlite", "memory"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    if request.param == "memory":
        yield MemoryJournal()
        return
    async with open_sqlite_journal(tmp_path / "producer.db") as journal:
        yield journal


async def start_stream(
    nursery: trio.Nursery,
    journal: Journal,
    *,
    source: EventProducerSource[Any, Any] = SOURCE,
    capacity: int = 100,
    settings: ProducerStreamSettings = QUIET,
    **init: Any,
) -> trio.MemoryReceiveChannel[Batch]:
    send, receive = trio.open_memory_channel[Batch](capacity)
    await nursery.start(
        lambda task_status: run_producer_stream(
            journal,
            source,
            valid_init(source, **init),
            INTERNAL,
            send,
            settings=settings,
            task_status=task_status,
        )
    )
    return receive


async def test_a_stream_catches_up_then_follows_in_order_with_the_public_events(
    journal: Journal,
) -> None:
    appender = Appender(journal)
    await appender.append("a", 1, 2, 3)
    await appender.append("b", 4)
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(nursery, journal)
            await received.collect(receive, 4)
            await appender.append("a", 5)
            await appender.append("b", 6, 7)
            # The live path and the query both bring the new events; the query, which is
            # the reliable path, brings each of them once.
            await received.collect(receive, 7, path=QUERY)
            nursery.cancel_scope.cancel()
    assert received.seq_nrs(QUERY) == {"Account|a": [1, 2, 3, 4], "Account|b": [1, 2, 3]}
    cents = {(r.persistence_id, r.seq_nr): public_cents(r) for r in received.records()}
    assert cents == {
        ("Account|a", 1): 100,
        ("Account|a", 2): 200,
        ("Account|a", 3): 300,
        ("Account|a", 4): 500,
        ("Account|b", 1): 400,
        ("Account|b", 2): 600,
        ("Account|b", 3): 700,
    }
    for records, _ in received.batches:  # the public manifest, never the internal one
        assert {r.payload.manifest for r in records if r.payload} <= {"public.Credited"}


async def test_events_committed_while_the_query_is_stalled_arrive_by_the_live_path(
    journal: Journal,
) -> None:
    counting = CountingJournal(journal)
    appender = Appender(journal)
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            counting.stall()  # no database read delivers anything until resumed
            receive = await start_stream(nursery, counting)
            await appender.append("a", 1, 2)
            await appender.append("b", 3)
            await received.collect(receive, 3, path=LIVE)
            assert counting.read_by_query == 0
            counting.resume()
            await received.collect(receive, 3, path=QUERY)
            nursery.cancel_scope.cancel()
    assert received.seq_nrs(LIVE) == {"Account|a": [1, 2], "Account|b": [1]}
    assert [public_cents(r) for r in received.records(LIVE)] == [100, 200, 300]


async def test_a_stream_starts_after_the_consumers_offsets(journal: Journal) -> None:
    appender = Appender(journal)
    stored = await appender.append("a", 1, 2, 3)
    pid = "Account|a"
    offset = TimestampOffset(stored[1].timestamp, {pid: 2})
    slice_ = slice_for(pid)
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(
                nursery,
                journal,
                slices=SliceRange(slice_, slice_),
                offsets=[SliceOffset(slice=slice_, offset=offset)],
            )
            await received.collect(receive, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert received.seq_nrs() == {pid: [3]}


async def test_what_a_later_slices_offset_has_seen_is_not_sent_again(journal: Journal) -> None:
    appender = Appender(journal)
    a1, b1, _, b2 = [
        (await appender.append(entity, amount))[0]
        for entity, amount in (("a", 1), ("b", 2), ("a", 3), ("b", 4))
    ]
    assert a1.slice != b1.slice
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(
                nursery,
                journal,
                slices=SliceRange(min(a1.slice, b1.slice), max(a1.slice, b1.slice)),
                offsets=[
                    SliceOffset(slice=a1.slice, offset=offset_after(a1)),
                    SliceOffset(slice=b1.slice, offset=offset_after(b2)),
                ],
            )
            await received.collect(receive, 1)
            await appender.append("b", 5)
            await received.collect(receive, 2, path=QUERY)
            nursery.cancel_scope.cancel()
    # The query resumes at a1, but b's offset has seen b1 and b2 already.
    assert received.seq_nrs(QUERY) == {"Account|a": [2], "Account|b": [3]}


class ConcurrentMemoryJournal(MemoryJournal):
    """The memory journal, declared to have concurrent writers (`HasConcurrentWriters`): its
    timestamps are then not taken to be commit order."""

    async def current_timestamp(self) -> int:
        return self._clock + 1_000_000  # its events are all well behind its clock


async def test_with_concurrent_writers_an_event_behind_a_later_slices_offset_is_sent() -> None:
    # The consumer's offset in b's slice is past c1, which it has not seen: with concurrent
    # writers c1 can have committed after the consumer's query passed its timestamp.
    journal = ConcurrentMemoryJournal()
    appender = Appender(journal)
    a1 = (await appender.append("a", 1))[0]
    b1 = (await appender.append("b", 2))[0]
    c = next(f"c{n}" for n in range(10_000) if slice_for(f"Account|c{n}") == b1.slice)
    c1 = (await appender.append(c, 3))[0]
    b2 = (await appender.append("b", 4))[0]
    assert a1.slice != b1.slice and a1.timestamp < c1.timestamp < b2.timestamp
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(
                nursery,
                journal,
                slices=SliceRange(min(a1.slice, b1.slice), max(a1.slice, b1.slice)),
                offsets=[
                    SliceOffset(slice=a1.slice, offset=offset_after(a1)),
                    SliceOffset(slice=b1.slice, offset=offset_after(b2)),
                ],
            )
            await appender.append("a", 5)
            while 2 not in received.seq_nrs(QUERY).get(a1.persistence_id, []):
                received.batches.append(await receive.receive())
            nursery.cancel_scope.cancel()
    # c1 came (before a2: timestamp order); so did b's, which the consumer drops by seq nr.
    assert received.seq_nrs(QUERY)[c1.persistence_id] == [1]


def offset_after(record: EventRecord) -> TimestampOffset:
    return TimestampOffset(record.timestamp, {record.persistence_id: record.seq_nr})


async def test_dropped_events_travel_as_placeholders_and_seq_nrs_stay_gapless(
    journal: Journal,
) -> None:
    def only_a(envelope: EventEnvelope[Added]) -> bool:
        return envelope.entity_id == "a"

    source = EventProducerSource(
        stream_id="accounts",
        entity_type=ENTITY_TYPE,
        serializers=PUBLIC,
        transformation=SOURCE.transformation,
        filter=only_a,
    )
    appender = Appender(journal)
    await appender.append("a", 1, -2, 3)  # -2: the transformation drops it
    await appender.append("b", 4, 5)  # the filter drops b
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(nursery, journal, source=source)
            await received.collect(receive, 5)
            nursery.cancel_scope.cancel()
    assert received.seq_nrs() == {"Account|a": [1, 2, 3], "Account|b": [1, 2]}
    cents = {(r.persistence_id, r.seq_nr): public_cents(r) for r in received.records()}
    assert cents == {
        ("Account|a", 1): 100,
        ("Account|a", 2): None,
        ("Account|a", 3): 300,
        ("Account|b", 1): None,
        ("Account|b", 2): None,
    }


async def test_without_transformation_stored_payloads_travel_untouched(journal: Journal) -> None:
    as_stored: EventProducerSource[Any, Any] = EventProducerSource(
        stream_id="accounts", entity_type=ENTITY_TYPE, serializers=INTERNAL
    )
    stored = await Appender(journal).append("a", 1, 2)
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(nursery, journal, source=as_stored)
            await received.collect(receive, 2)
            nursery.cancel_scope.cancel()
    assert [r.payload for r in received.records()] == [r.payload for r in stored]


async def test_a_consumer_that_wants_no_payloads_gets_none(journal: Journal) -> None:
    await Appender(journal).append("a", 1, 2)
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(nursery, journal, with_payloads=False)
            await received.collect(receive, 2)
            nursery.cancel_scope.cancel()
    assert [(r.seq_nr, r.payload) for r in received.records()] == [(1, None), (2, None)]


async def test_catch_up_comes_in_batches_of_at_most_the_batch_size(journal: Journal) -> None:
    await Appender(journal).append("a", *range(10))
    settings = ProducerStreamSettings(batch_size=3, source=QUIET.source)
    received = Received()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receive = await start_stream(nursery, journal, settings=settings)
            await received.collect(receive, 10)
            nursery.cancel_scope.cancel()
    assert [len(records) for records, _ in received.batches] == [3, 3, 3, 1]
    assert received.seq_nrs() == {"Account|a": list(range(1, 11))}


async def test_a_short_batch_waits_the_batch_delay_for_more_of_its_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = MemoryJournal()  # no threads: virtual time is exact
    appender = Appender(journal)
    settings = ProducerStreamSettings(batch_size=100, batch_delay=1.0, source=QUIET.source)
    async with trio.open_nursery() as nursery:
        receive = await start_stream(nursery, journal, settings=settings)
        start = trio.current_time()
        await appender.append("a", 1)
        await trio.sleep(0.5)
        await appender.append("a", 2)
        batches = [await receive.receive() for _ in range(2)]
        nursery.cancel_scope.cancel()
    # One live and one query batch, each of both events, sent when the first one's delay
    # ran out (the live one arrives first: it needs no read).
    assert sorted((p.value, [r.seq_nr for r in rs]) for rs, p in batches) == [
        ("live", [1, 2]),
        ("query", [1, 2]),
    ]
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_started_is_awaited_with_the_live_path_open_and_before_any_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The transport sends its StreamStarted in `started`, into the channel the batches take.
    journal = MemoryJournal()  # no threads: the query's first page is ready at once
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    send, receive = trio.open_memory_channel[Batch](100)
    sent_during_started: list[Batch] = []

    async def started() -> None:
        await appender.append("a", 3)  # committed now: it must come by the live path too
        await trio.sleep(5)  # time for the query and the batcher to send, if they could
        while True:
            try:
                sent_during_started.append(receive.receive_nowait())
            except trio.WouldBlock:
                break

    received = Received()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_producer_stream(
                    journal,
                    SOURCE,
                    valid_init(SOURCE),
                    INTERNAL,
                    send,
                    settings=QUIET,
                    started=started,
                    task_status=task_status,
                )
            )
            await received.collect(receive, 1, path=LIVE)
            await received.collect(receive, 3, path=QUERY)
            nursery.cancel_scope.cancel()
    assert sent_during_started == []
    assert received.seq_nrs(LIVE) == {"Account|a": [3]}
    assert received.seq_nrs(QUERY) == {"Account|a": [1, 2, 3]}


async def test_an_init_of_another_stream_is_refused(journal: Journal) -> None:
    other: EventProducerSource[Any, Any] = EventProducerSource(
        stream_id="others", entity_type="Other", serializers=PUBLIC
    )
    send, _ = trio.open_memory_channel[Batch](1)
    with pytest.raises(UsageError, match="the Init of stream 'others'"):
        await run_producer_stream(journal, SOURCE, valid_init(other), INTERNAL, send)


class TransformationFailed(Exception):
    pass


def _failing(envelope: EventEnvelope[Added]) -> Credited | None:
    raise TransformationFailed(envelope.persistence_id)


async def test_an_exception_of_the_transformation_ends_the_stream_as_itself(
    journal: Journal,
) -> None:
    await Appender(journal).append("a", 1)
    failing: EventProducerSource[Added, Credited] = EventProducerSource(
        stream_id="accounts", entity_type=ENTITY_TYPE, serializers=PUBLIC, transformation=_failing
    )
    send, _ = trio.open_memory_channel[Batch](100)
    with trio.fail_after(10), pytest.raises(TransformationFailed, match=r"Account\|a"):
        await run_producer_stream(
            journal, failing, valid_init(failing), INTERNAL, send, settings=QUIET
        )


async def test_a_replay_gives_the_public_events_between_two_seq_nrs(journal: Journal) -> None:
    appender = Appender(journal)
    await appender.append("a", 1, -2, 3, 4, 5)
    replayed = await replay_events(journal, SOURCE, INTERNAL, "Account|a", 2, 4)
    assert [(r.seq_nr, public_cents(r)) for r in replayed] == [(2, None), (3, 300), (4, 400)]
    beyond = await replay_events(journal, SOURCE, INTERNAL, "Account|a", 5, 99)
    assert [(r.seq_nr, public_cents(r)) for r in beyond] == [(5, 500)]  # fewer: all there is
    batches = [
        [r.seq_nr for r in batch]
        async for batch in replay_batches(
            journal, SOURCE, INTERNAL, "Account|a", 1, 5, batch_size=2
        )
    ]
    assert batches == [[1, 2], [3, 4], [5]]


async def test_load_event_and_event_timestamp_answer_in_the_public_form(journal: Journal) -> None:
    stored = await Appender(journal).append("a", 7, -1)
    loaded = await load_event(journal, SOURCE, INTERNAL, "Account|a", 1)
    assert loaded is not None and public_cents(loaded) == 700
    dropped = await load_event(journal, SOURCE, INTERNAL, "Account|a", 2)
    assert dropped is not None and dropped.payload is None  # a placeholder
    assert await load_event(journal, SOURCE, INTERNAL, "Account|a", 3) is None
    assert await event_timestamp(journal, SOURCE, "Account|a", 2) == stored[1].timestamp
    assert await event_timestamp(journal, SOURCE, "Account|a", 3) is None


@pytest.mark.parametrize(
    ("pid", "seq_nr", "reason"),
    [
        ("Secret|a", 1, RefusalReason.OTHER_ENTITY_TYPE),
        ("Account", 1, RefusalReason.PERSISTENCE_ID),
        ("Account|a", 0, RefusalReason.SEQ_NR),
    ],
)
async def test_lookups_refuse_other_entity_types_and_bad_seq_nrs(
    journal: Journal, pid: str, seq_nr: int, reason: RefusalReason
) -> None:
    for lookup in (
        load_event(journal, SOURCE, INTERNAL, pid, seq_nr),
        event_timestamp(journal, SOURCE, pid, seq_nr),
        replay_events(journal, SOURCE, INTERNAL, pid, seq_nr, 10),
    ):
        with pytest.raises(RemoteStreamError) as caught:
            await lookup
        assert caught.value.reason is reason
        assert repr(pid) in str(caught.value) or pid in str(caught.value)
