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
    EventsStream,
    events_stream,
    init_request,
    kind,
    producer_channel,
    receive_events,
    records_of,
)

from fluvial.core.errors import UsageError
from fluvial.core.ids import slice_for
from fluvial.core.records import EventEnvelope
from fluvial.grpc import (
    GrpcCallFailed,
    GrpcUnavailable,
    ProducerSettings,
    ServerSettings,
    serve_producer,
)
from fluvial.grpc._channel import open_channel
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.api import Journal
from fluvial.journal.memory import MemoryJournal
from fluvial.journal.sqlite._journal import open_sqlite_journal
from producer_fixtures import INTERNAL, SOURCE, Added, Appender, Credited, public_cents


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


def exclude_all_but(*entity_ids: str) -> list[pb.FilterCriterion]:
    return [
        pb.FilterCriterion(exclude_regexes=pb.Regexes([".*"])),
        pb.FilterCriterion(
            include_entity_ids=pb.IncludeEntityIds([pb.IncludedEntityId(i) for i in entity_ids])
        ),
    ]


async def filter_answer(stream: EventsStream, update: pb.FilterUpdate) -> pb.StreamEventsResponse:
    await stream.send(pb.StreamEventsRequest(filter_update=update))
    with trio.fail_after(10):
        while kind(answer := await stream.receive()) in {"heartbeat", "batch"}:
            pass
    assert answer is not None
    return answer


async def test_the_consumers_filter_holds_from_init_and_from_each_acknowledged_update() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    await appender.append("a", 1)
    await appender.append("b", 2)
    init = init_request(filter=exclude_all_but("b"))
    async with producer_channel(journal) as channel, events_stream(channel, init) as s:
        assert list(await receive_events(s, 1)) == ["Account|b"]
        # Criteria fold: the include of b holds until removed.
        forget_b = pb.FilterCriterion(remove_include_entity_ids=pb.EntityIds(["b"]))
        answer = await filter_answer(s, pb.FilterUpdate(4, [*exclude_all_but("c"), forget_b]))
        assert answer.filter_update_ack == pb.FilterUpdateAck(4)
        for entity_id in ("a", "b", "c"):
            await appender.append(entity_id, 3)
        received = await receive_events(s, 1)
        assert list(received) == ["Account|c"]  # a and b are excluded now, and do not travel


@pytest.mark.parametrize(
    ("criterion", "message"),
    [
        pytest.param(pb.FilterCriterion(), "criterion 0 has no kind set", id="no-kind"),
        pytest.param(
            pb.FilterCriterion(include_regexes=pb.Regexes(["("])),
            "filter criterion 0 (include_regexes): IncludeRegexEntityIds",
            id="bad-regex",
        ),
        pytest.param(
            pb.FilterCriterion(include_topics=pb.Topics(["a/#/b"])),
            "filter criterion 0 (include_topics): IncludeTopics",
            id="bad-topic",
        ),
    ],
)
async def test_a_refused_filter_update_leaves_the_filter_and_the_stream_as_they_were(
    criterion: pb.FilterCriterion, message: str
) -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    init = init_request(filter=exclude_all_but("a"))
    async with producer_channel(journal) as channel, events_stream(channel, init) as s:
        # The first criterion is fine: the whole update is refused all the same.
        update = pb.FilterUpdate(5, [*exclude_all_but("b"), criterion])
        answer = await filter_answer(s, update)
        refused = answer.filter_update_refused
        assert refused is not None
        assert (refused.correlation_id, refused.status_code, refused.criterion_index) == (5, 3, 2)
        assert message.replace("0", "2") in refused.message
        assert "the filter stays as it was" in refused.message
        await appender.append("b", 1)
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


async def test_a_producer_shutting_down_ends_its_streams_unavailable() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_producer(
                MemoryJournal(), [SOURCE], serializers=INTERNAL, task_status=task_status
            )
        )
        async with (
            open_channel("127.0.0.1", port) as channel,
            events_stream(channel, init_request()) as stream,
        ):
            nursery.cancel_scope.cancel()
            with trio.fail_after(10), pytest.raises(GrpcUnavailable, match="shutting down"):
                while True:
                    await stream.receive()


def _unlucky(envelope: EventEnvelope[Added]) -> Credited | None:
    if envelope.event.amount == 13:
        raise ValueError("13 is not published")
    return Credited(envelope.event.amount)


async def test_a_transformation_that_raises_ends_its_stream_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    unlucky = attrs.evolve(SOURCE, stream_id="unlucky", transformation=_unlucky)
    async with (
        producer_channel(journal, sources=[SOURCE, unlucky]) as channel,
        events_stream(channel, init_request()) as good,
        events_stream(channel, init_request("unlucky")) as bad,
    ):
        await appender.append("a", 13)
        with trio.fail_after(10), pytest.raises(GrpcCallFailed) as failed:
            while True:
                await bad.receive()
        assert failed.value.status == "UNKNOWN"
        assert "13 is not published" in caplog.text  # logged by the server
        await appender.append("b", 1)
        with trio.fail_after(10):
            while "Account|b" not in await receive_events(good, 1):
                pass


async def test_a_batch_larger_than_the_send_limit_travels_split() -> None:
    journal = MemoryJournal()
    await Appender(journal).append("a", *range(1, 201))  # ~9 KiB in one batch of 200
    settings = attrs.evolve(QUIET, server=ServerSettings(max_send_message_size=2000))
    async with (
        producer_channel(journal, settings=settings) as channel,
        events_stream(channel, init_request()) as stream,
    ):
        sizes: list[int] = []
        seq_nrs: list[int] = []
        with trio.fail_after(10):
            while len(seq_nrs) < 200:
                message = await stream.receive()
                if message is not None and message.batch is not None:
                    sizes.append(len(bytes(message)))
                    seq_nrs += [r.seq_nr for r in records_of(message.batch)]
        assert seq_nrs == list(range(1, 201))
        assert len(sizes) > 4 and max(sizes) <= 2000
