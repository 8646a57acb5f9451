"""Bad input to serve_producer: each bad stream or call ends with the right status and a
message saying what was wrong, while another consumer's stream on the same producer keeps
receiving events, and the journal is left as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from grpc_transport_helpers import grpc_frame, raw_h2_call
from producer_service_helpers import (
    LATEST_EVENT_TIMESTAMP,
    LOAD_EVENT,
    QUIET,
    REPLAY,
    STREAM_EVENTS,
    EventsStream,
    events_stream,
    init_request,
    kind,
    producer_server,
    receive_events,
)

from fluvial.core.ids import slice_for
from fluvial.grpc import (
    GrpcError,
    GrpcInvalidArgument,
    GrpcNotFound,
    GrpcResourceExhausted,
    GrpcUnimplemented,
    ServerSettings,
)
from fluvial.grpc._channel import GrpcChannel, open_channel
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.memory import MemoryJournal
from producer_fixtures import Appender

SETTINGS = attrs.evolve(QUIET, server=ServerSettings(max_receive_message_size=2000))
OTHER_SLICE = next(s for s in range(1024) if s != slice_for("Account|a"))


def request(**fields: object) -> pb.StreamEventsRequest:
    return pb.StreamEventsRequest(**fields)  # type: ignore[arg-type]


FILTER_UPDATE = request(filter_update=pb.FilterUpdate(1, []))
BAD_STREAMS = [
    pytest.param(
        [init_request("nope")], GrpcNotFound, "serves no stream id 'nope'", id="unknown-stream-id"
    ),
    pytest.param(
        [init_request(slice_min=0, slice_max=1024)],
        GrpcInvalidArgument,
        r"slice range 0\.\.1024 is not within 0\.\.1023",
        id="slice-range-outside",
    ),
    pytest.param(
        [init_request(slice_min=7, slice_max=3)],
        GrpcInvalidArgument,
        r"slice range 7\.\.3",
        id="slice-range-inverted",
    ),
    pytest.param(
        [init_request(slice_min=0, slice_max=10, offsets=[pb.SliceOffset(slice=11)])],
        GrpcInvalidArgument,
        "an offset of slice 11, outside the requested slices",
        id="offset-outside-range",
    ),
    pytest.param(
        [init_request(offsets=[pb.SliceOffset(slice=OTHER_SLICE, seen={"Account|a": 1})])],
        GrpcInvalidArgument,
        f"the offset of slice {OTHER_SLICE} names Account|a",
        id="offset-of-another-slice",
    ),
    pytest.param(
        [init_request(offsets=[pb.SliceOffset(slice=3, timestamp=-1)])],
        GrpcInvalidArgument,
        "negative timestamp",
        id="negative-offset-timestamp",
    ),
    pytest.param(
        [init_request(filter=[pb.FilterCriterion(exclude_regexes=pb.Regexes(["[a-"]))])],
        GrpcInvalidArgument,
        r"Init: filter criterion 0 \(exclude_regexes\): ExcludeRegexEntityIds",
        id="init-with-a-bad-regex",
    ),
    pytest.param([FILTER_UPDATE], GrpcInvalidArgument, "FilterUpdate before Init", id="no-init"),
    pytest.param(
        [init_request(), init_request()], GrpcInvalidArgument, "a second Init", id="second-init"
    ),
    pytest.param(
        [init_request(), request(replay=pb.StreamReplayRequest(1, "Other|a", 1))],
        GrpcInvalidArgument,
        "not an entity of the stream's type 'Account'",
        id="replay-of-another-entity-type",
    ),
    pytest.param(
        [init_request(), request(replay=pb.StreamReplayRequest(1, "Account|a", 0))],
        GrpcInvalidArgument,
        "seq nr 0 of Account|a is not within",
        id="replay-from-seq-nr-0",
    ),
    pytest.param(
        [request()], GrpcUnimplemented, "no kind this producer knows", id="request-of-no-kind"
    ),
    pytest.param(
        [init_request("s" * 3000)],
        GrpcResourceExhausted,
        "larger than this side's max_receive_message_size of 2000 bytes",
        id="oversize-message",
    ),
]


@asynccontextmanager
async def producer_with_a_good_stream() -> AsyncIterator[
    tuple[int, GrpcChannel, EventsStream, Appender]
]:
    journal = MemoryJournal()
    appender = Appender(journal)
    async with (
        producer_server(journal, settings=SETTINGS) as port,
        open_channel("127.0.0.1", port) as channel,
        events_stream(channel, init_request()) as good,
    ):
        yield port, channel, good, appender


async def still_serving(good: EventsStream, appender: Appender, entity_id: str) -> None:
    """The good stream receives an event committed now: the producer serves it still. The
    journal holds the test's own commits alone, before and after: what the streams sent since
    the last look (a bad one among them) wrote nothing."""
    assert appender.journal.append_count() == appender.commits
    await appender.append(entity_id, 1)
    with trio.fail_after(10):  # what came before may come again (live and query)
        while f"Account|{entity_id}" not in await receive_events(good, 1):
            pass
    assert appender.journal.append_count() == appender.commits


@pytest.mark.parametrize(("requests", "error", "message"), BAD_STREAMS)
async def test_a_bad_stream_ends_with_its_status_and_the_others_go_on(
    requests: Sequence[pb.StreamEventsRequest], error: type[GrpcError], message: str
) -> None:
    async with producer_with_a_good_stream() as (_, channel, good, appender):
        await still_serving(good, appender, "before")
        async with events_stream(channel) as bad:
            with trio.fail_after(10), pytest.raises(error, match=message):
                for item in requests:
                    await bad.send(item)
                # A good Init is served until the bad request that follows it is read: its
                # StreamStarted, and the event appended before may come (a race), or a
                # heartbeat.
                while True:
                    assert kind(await bad.receive()) in {"started", "batch", "heartbeat"}
        await still_serving(good, appender, "after")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param(
            grpc_frame(b"garbage bytes, not protobuf"),
            "3",
            "malformed message: StreamEventsRequest: not a protobuf message (wire type 7",
            id="garbage",
        ),
        pytest.param(
            grpc_frame(b"\x0a\x05abc"),
            "3",
            "field 1 at byte 0 runs past the end",
            id="truncated-field",
        ),
        pytest.param(
            grpc_frame(b"\x0a\x02\x08\xff"),
            "3",
            "malformed message: StreamEventsRequest: not a protobuf message",
            id="truncated-varint-inside-init",
        ),
        pytest.param(grpc_frame(b"", announced=10**9), "8", "1000000000 bytes", id="huge-prefix"),
        pytest.param(grpc_frame(b"\x0a\x00")[:4], "3", "in the middle of a message", id="cut"),
    ],
)
async def test_malformed_bytes_end_their_stream_and_the_others_go_on(
    body: bytes, status: str, message: str
) -> None:
    async with producer_with_a_good_stream() as (port, _, good, appender):
        with trio.fail_after(10):
            answer = await raw_h2_call(port, STREAM_EVENTS, body, end_stream=True)
        assert answer.get("grpc-status") == status, answer
        assert message in answer.get("grpc-message", ""), answer
        await still_serving(good, appender, "after")


async def test_a_peer_sending_garbage_on_its_connection_disturbs_no_stream() -> None:
    async with producer_with_a_good_stream() as (port, _, good, appender):
        for garbage in (
            b"GET / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
        ):
            with trio.fail_after(5):
                async with await trio.open_tcp_stream("127.0.0.1", port) as bad:
                    await bad.send_all(garbage)
                    with trio.move_on_after(0.1):
                        await bad.receive_some(65536)
        await still_serving(good, appender, "after")


@pytest.mark.parametrize(
    ("method", "message", "reply", "error", "text"),
    [
        pytest.param(
            LOAD_EVENT,
            pb.LoadEventRequest("nope", "Account|a", 1),
            pb.LoadEventResponse,
            GrpcNotFound,
            "LoadEvent: this producer serves no stream id 'nope'",
            id="load-unknown-stream",
        ),
        pytest.param(
            LOAD_EVENT,
            pb.LoadEventRequest("accounts", "Other|a", 1),
            pb.LoadEventResponse,
            GrpcInvalidArgument,
            "not an entity of the stream's type 'Account'",
            id="load-other-entity-type",
        ),
        pytest.param(
            LOAD_EVENT,
            pb.LoadEventRequest("accounts", "no-bar", 1),
            pb.LoadEventResponse,
            GrpcInvalidArgument,
            "load event",
            id="load-not-a-persistence-id",
        ),
        pytest.param(
            LATEST_EVENT_TIMESTAMP,
            pb.LatestEventTimestampRequest("accounts", 5, 4),
            pb.LatestEventTimestampResponse,
            GrpcInvalidArgument,
            r"slice range 5\.\.4 is not within",
            id="latest-inverted-range",
        ),
        pytest.param(
            REPLAY,
            pb.ReplayRequest("accounts", "Account|a", 5, 4),
            pb.ReplayResponse,
            GrpcInvalidArgument,
            r"seq nrs 5\.\.4 of Account\|a are inverted",
            id="replay-inverted",
        ),
        pytest.param(
            REPLAY,
            pb.ReplayRequest("accounts", "Account|a", -1),
            pb.ReplayResponse,
            GrpcInvalidArgument,
            "seq nr -1 of Account|a is not within",
            id="replay-negative",
        ),
    ],
)
async def test_a_bad_unary_call_ends_with_its_status(
    method: str, message: object, reply: type[object], error: type[GrpcError], text: str
) -> None:
    async with producer_with_a_good_stream() as (port, channel, good, appender):
        with trio.fail_after(10), pytest.raises(error, match=text.replace("|", r"\|")):
            await channel.unary(method, message, reply)
        with trio.fail_after(10):
            answer = await raw_h2_call(port, method, grpc_frame(b"\xff\xff"), end_stream=True)
        assert answer.get("grpc-status") == "3", answer
        assert "not a protobuf message" in answer.get("grpc-message", ""), answer
        await still_serving(good, appender, "after")
