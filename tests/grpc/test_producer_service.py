"""serve_producer over real loopback: a consumer's StreamEvents call receives StreamStarted,
the journal's events after its offsets (catch-up), then what is committed later (live), in
their public form and the batch encoding, heartbeats when idle, acks of its filter updates,
and the answers of its replay requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
from producer_service_helpers import (
    QUIET,
    events_stream,
    init_request,
    kind,
    producer_channel,
    receive_events,
    records_of,
)

from fluvial.core.errors import UsageError
from fluvial.core.ids import slice_for
from fluvial.grpc import ProducerSettings, serve_producer
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.api import Journal
from fluvial.journal.memory import MemoryJournal
from fluvial.journal.sqlite._journal import open_sqlite_journal
from producer_fixtures import INTERNAL, SOURCE, Appender, public_cents


@pytest.fixture(params=["sqlite", "memory"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    if request.param == "memory":
        yield MemoryJournal()
        return
    async with open_sqlite_journal(tmp_path / "producer.db") as journal:
        yield journal


async def test_a_stream_catches_up_then_follows_in_the_public_form(journal: Journal) -> None:
    appender = Appender(journal)
    await appender.append("a", 1, 2, -3)  # -3: the transformation drops it (a placeholder)
    await appender.append("b", 4)
    async with producer_channel(journal) as channel, events_stream(channel, init_request()) as s:
        caught_up = await receive_events(s, 4)
        assert {pid: sorted(seqs) for pid, seqs in caught_up.items()} == {
            "Account|a": [1, 2, 3],
            "Account|b": [1],
        }
        assert {path for by_seq in caught_up.values() for path, _ in by_seq.values()} == {
            pb.EventPath.QUERY
        }
        cents = [public_cents(caught_up["Account|a"][n][1]) for n in (1, 2, 3)]
        assert cents == [100, 200, None]

        await appender.append("a", 5)
        await appender.append("c", 6)
        live = await receive_events(s, 2)
        assert public_cents(live["Account|a"][4][1]) == 500
        assert public_cents(live["Account|c"][1][1]) == 600


async def test_offsets_and_slices_choose_what_a_stream_catches_up_with() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    stored = await appender.append("a", 1, 2, 3)
    second = stored[1]
    offset = pb.SliceOffset(
        slice=second.slice, timestamp=second.timestamp, seen={second.persistence_id: 2}
    )
    other = "Account|x"
    while slice_for(other) == second.slice:  # an entity outside the stream's one slice
        other += "x"
    await appender.append(other.split("|")[1], 9)
    init = init_request(slice_min=second.slice, slice_max=second.slice, offsets=[offset])
    async with producer_channel(journal) as channel, events_stream(channel, init) as s:
        received = await receive_events(s, 1)
        assert list(received) == ["Account|a"] and list(received["Account|a"]) == [3]
        path, record = received["Account|a"][3]
        assert (path, public_cents(record), record.timestamp) == (
            pb.EventPath.QUERY,
            300,
            stored[2].timestamp,
        )


async def test_an_idle_stream_gets_heartbeats(autojump_clock: object) -> None:
    settings = attrs.evolve(QUIET, heartbeat_interval=3.0)
    async with (
        producer_channel(MemoryJournal(), settings=settings) as channel,
        events_stream(channel, init_request()) as stream,
    ):
        start = trio.current_time()
        assert kind(await stream.receive()) == "heartbeat"
        assert kind(await stream.receive()) == "heartbeat"
        assert trio.current_time() - start == pytest.approx(6.0, abs=0.5)


async def test_filter_updates_are_acknowledged_or_refused_and_the_stream_goes_on() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    async with producer_channel(journal) as channel, events_stream(channel, init_request()) as s:
        include = pb.FilterCriterion(include_entity_ids=pb.IncludeEntityIds([]))
        await s.send(pb.StreamEventsRequest(filter_update=pb.FilterUpdate(4, [include])))
        answer = await s.receive()
        assert answer is not None and answer.filter_update_ack == pb.FilterUpdateAck(4)

        # A criterion of no kind (a newer consumer's) refuses the whole update.
        await s.send(
            pb.StreamEventsRequest(filter_update=pb.FilterUpdate(5, [pb.FilterCriterion()]))
        )
        answer = await s.receive()
        assert answer is not None and answer.filter_update_refused is not None
        refused = answer.filter_update_refused
        assert (refused.correlation_id, refused.status_code) == (5, 3)
        assert "criterion 0 has no kind set" in refused.message

        await appender.append("a", 1)
        assert list(await receive_events(s, 1)) == ["Account|a"]


async def test_a_replay_request_is_answered_by_replay_batches_the_last_complete() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    await appender.append("a", *range(1, 8))
    settings = attrs.evolve(QUIET, stream=attrs.evolve(QUIET.stream, batch_size=3))
    async with (
        producer_channel(journal, settings=settings) as channel,
        events_stream(channel, init_request()) as s,
    ):
        await receive_events(s, 7)
        request = pb.StreamReplayRequest(9, "Account|a", 2, 6)
        await s.send(pb.StreamEventsRequest(replay=request))
        parts: list[pb.EventBatch] = []
        with trio.fail_after(10):
            while not parts or not parts[-1].replay or not parts[-1].replay.complete:
                message = await s.receive()
                if message is not None and message.batch is not None:
                    parts.append(message.batch)
        assert [b.path for b in parts] == [pb.EventPath.REPLAY] * len(parts)
        assert [b.replay for b in parts[:-1]] == [pb.ReplayPart(9, "Account|a", False)] * (
            len(parts) - 1
        )
        seq_nrs = [r.seq_nr for b in parts for r in records_of(b)]
        assert seq_nrs == [2, 3, 4, 5, 6]
        assert [public_cents(r) for b in parts for r in records_of(b)] == [200, 300, 400, 500, 600]


async def test_the_consumer_ending_its_side_ends_the_stream_ok() -> None:
    async with (
        producer_channel(MemoryJournal()) as channel,
        events_stream(channel, init_request()) as stream,
    ):
        await stream.end()
        with trio.fail_after(5):
            while (message := await stream.receive()) is not None:
                assert kind(message) == "heartbeat"


async def test_serve_producer_refuses_no_sources_and_two_of_one_stream_id() -> None:
    with pytest.raises(UsageError, match="at least one"):
        await serve_producer(MemoryJournal(), [], serializers=INTERNAL)
    with pytest.raises(UsageError, match="two sources of stream id 'accounts'"):
        await serve_producer(MemoryJournal(), [SOURCE, SOURCE], serializers=INTERNAL)
    with pytest.raises(UsageError, match="heartbeat_interval"):
        ProducerSettings(heartbeat_interval=0)
