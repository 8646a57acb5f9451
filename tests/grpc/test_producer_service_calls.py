"""The producer service's unary calls over loopback (LoadEvent, EventTimestamp,
LatestEventTimestamp, Replay) and the streams whose consumers load payloads with them:
omit_payloads, and the backtracking path."""

from __future__ import annotations

import attrs
import trio
from producer_service_helpers import (
    EVENT_TIMESTAMP,
    LATEST_EVENT_TIMESTAMP,
    LOAD_EVENT,
    QUIET,
    REPLAY,
    events_stream,
    init_request,
    kind,
    producer_channel,
    receive_events,
    records_of,
)

from fluvial.core.ids import slice_for
from fluvial.grpc import ProducerStreamSettings, ServerSettings
from fluvial.grpc._batch_codec import decode_events
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.memory import MemoryJournal
from fluvial.projection._source_settings import SourceSettings
from producer_fixtures import Appender, public_cents


async def test_load_event_and_event_timestamp_answer_in_the_public_form() -> None:
    journal = MemoryJournal()
    stored = await Appender(journal).append("a", 7, -1)
    async with producer_channel(journal) as channel:

        async def load(seq_nr: int) -> list[int | None]:
            reply = await channel.unary(
                LOAD_EVENT,
                pb.LoadEventRequest("accounts", "Account|a", seq_nr),
                pb.LoadEventResponse,
            )
            return [public_cents(r) for r in decode_events(reply.events, encoding=reply.encoding)]

        async def timestamp(seq_nr: int) -> int | None:
            reply = await channel.unary(
                EVENT_TIMESTAMP,
                pb.EventTimestampRequest("accounts", "Account|a", seq_nr),
                pb.EventTimestampResponse,
            )
            return reply.timestamp

        with trio.fail_after(10):
            assert await load(1) == [700]
            assert await load(2) == [None]  # the transformation drops it: a placeholder
            assert await load(3) == []  # not stored: no row
            assert await timestamp(1) == stored[0].timestamp
            assert await timestamp(3) is None


async def test_latest_event_timestamp_of_a_slice_range_follows_the_journal() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    ids = ["zebra", "a", "cart"]
    lower = [i for i in ids if slice_for(f"Account|{i}") < 512]
    upper = [i for i in ids if slice_for(f"Account|{i}") >= 512]
    assert lower and upper, "the ids cover both halves"
    async with producer_channel(journal) as channel:

        async def latest(slice_min: int, slice_max: int) -> int | None:
            reply = await channel.unary(
                LATEST_EVENT_TIMESTAMP,
                pb.LatestEventTimestampRequest("accounts", slice_min, slice_max),
                pb.LatestEventTimestampResponse,
            )
            return reply.timestamp

        with trio.fail_after(10):
            assert await latest(0, 1023) is None
            low = await appender.append(lower[0], 1, 2)
            assert await latest(0, 511) == low[-1].timestamp
            assert await latest(512, 1023) is None
            high = await appender.append(upper[0], 3)
            assert await latest(0, 1023) == high[-1].timestamp
            assert await latest(0, 511) == low[-1].timestamp  # asked again: read on from there
            later = await appender.append(lower[0], 4)
            assert await latest(0, 511) == later[-1].timestamp


async def test_replay_answers_in_order_and_says_when_it_stopped_early() -> None:
    journal = MemoryJournal()
    await Appender(journal).append("a", *range(1, 21))

    async def replay(settings: object, first: int, last: int | None = None) -> pb.EventBatch:
        assert isinstance(settings, type(QUIET))
        async with producer_channel(journal, settings=settings) as channel:
            with trio.fail_after(10):
                reply = await channel.unary(
                    REPLAY,
                    pb.ReplayRequest("accounts", "Account|a", first, last),
                    pb.ReplayResponse,
                )
        assert reply.batch is not None and reply.batch.path == pb.EventPath.REPLAY
        return reply.batch

    whole = await replay(QUIET, 3, 12)
    assert [r.seq_nr for r in records_of(whole)] == list(range(3, 13))
    assert [public_cents(r) for r in records_of(whole)][:2] == [300, 400]
    assert whole.replay == pb.ReplayPart(0, "Account|a", True)
    assert (await replay(QUIET, 1)).replay == pb.ReplayPart(0, "Account|a", True)

    by_count = await replay(attrs.evolve(QUIET, max_replay_events=5), 3)
    assert [r.seq_nr for r in records_of(by_count)] == [3, 4, 5, 6, 7]
    assert by_count.replay == pb.ReplayPart(0, "Account|a", False)
    exactly = await replay(attrs.evolve(QUIET, max_replay_events=5), 16)
    assert [r.seq_nr for r in records_of(exactly)] == [16, 17, 18, 19, 20]
    assert exactly.replay == pb.ReplayPart(0, "Account|a", True)  # nothing more to send

    # Each row is ~45 bytes: a 400-byte message holds a few of them, and says so.
    small = attrs.evolve(QUIET, server=ServerSettings(max_send_message_size=400))
    by_size = await replay(small, 1)
    assert 2 < len(records_of(by_size)) < 20
    assert by_size.replay == pb.ReplayPart(0, "Account|a", False)
    assert len(bytes(pb.ReplayResponse(batch=by_size))) <= 400


async def test_a_stream_without_payloads_and_the_event_loaded_afterwards() -> None:
    journal = MemoryJournal()
    await Appender(journal).append("a", 3, 4)
    init = init_request(omit_payloads=True)
    async with producer_channel(journal) as channel, events_stream(channel, init) as stream:
        received = await receive_events(stream, 2)
        assert [record.payload for _, record in received["Account|a"].values()] == [None, None]
        reply = await channel.unary(
            LOAD_EVENT, pb.LoadEventRequest("accounts", "Account|a", 2), pb.LoadEventResponse
        )
        assert [public_cents(r) for r in decode_events(reply.events)] == [400]


async def test_late_events_come_by_the_backtracking_path_without_payloads() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    settings = attrs.evolve(
        QUIET,
        stream=ProducerStreamSettings(
            source=SourceSettings(live=False, backtracking_interval=0.05, backtracking_span=60)
        ),
    )
    async with (
        producer_channel(journal, settings=settings) as channel,
        events_stream(channel, init_request()) as stream,
    ):
        await appender.append("a", 5)
        paths: dict[pb.EventPath, list[pb.EventBatch]] = {}
        with trio.fail_after(10):
            while pb.EventPath.BACKTRACKING not in paths or pb.EventPath.QUERY not in paths:
                message = await stream.receive()
                if kind(message) == "batch":
                    assert message is not None and message.batch is not None
                    paths.setdefault(message.batch.path, []).append(message.batch)
        [backtracked] = [r for b in paths[pb.EventPath.BACKTRACKING] for r in records_of(b)][:1]
        assert (backtracked.persistence_id, backtracked.seq_nr) == ("Account|a", 1)
        assert backtracked.payload is None
