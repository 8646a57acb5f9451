"""Shared by the producer service tests: a producer served on loopback, a consumer's stream
opened through fluvial's channel, and what its messages held."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import betterproto2
import trio

from fluvial.core.records import EventRecord
from fluvial.grpc import EventProducerSource, ProducerSettings, ProducerStreamSettings
from fluvial.grpc._auth import AuthHook
from fluvial.grpc._batch_codec import decode_events
from fluvial.grpc._channel import ClientStream, GrpcChannel, open_channel
from fluvial.grpc._producer_service import serve_producer
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.api import Journal
from fluvial.nursery_errors import open_service_nursery
from fluvial.projection._source_settings import SourceSettings
from producer_fixtures import INTERNAL, SOURCE

STREAM_EVENTS = "/fluvial.v1.EventProducerService/StreamEvents"
LOAD_EVENT = "/fluvial.v1.EventProducerService/LoadEvent"
EVENT_TIMESTAMP = "/fluvial.v1.EventProducerService/EventTimestamp"
LATEST_EVENT_TIMESTAMP = "/fluvial.v1.EventProducerService/LatestEventTimestamp"
REPLAY = "/fluvial.v1.EventProducerService/Replay"

# No backtracking (its batches would interleave with what a test counts), quick heartbeats.
QUIET = ProducerSettings(
    stream=ProducerStreamSettings(source=SourceSettings(backtracking_interval=None)),
    heartbeat_interval=0.2,
)

EventsStream = ClientStream[pb.StreamEventsRequest, pb.StreamEventsResponse]


@asynccontextmanager
async def producer_server(
    journal: Journal,
    sources: Sequence[EventProducerSource[Any, Any]] = (SOURCE,),
    *,
    settings: ProducerSettings = QUIET,
    auth: AuthHook | None = None,
) -> AsyncIterator[int]:
    """`serve_producer` on a free loopback port (yielded) for the block's duration."""
    async with open_service_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_producer(
                journal,
                sources,
                serializers=INTERNAL,
                settings=settings,
                auth=auth,
                task_status=task_status,
            )
        )
        yield port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def producer_channel(journal: Journal, **kwargs: Any) -> AsyncIterator[GrpcChannel]:
    """A producer on loopback and a channel to it."""
    async with producer_server(journal, **kwargs) as port, open_channel("127.0.0.1", port) as ch:
        yield ch


def init_request(
    stream_id: str = "accounts",
    slice_min: int = 0,
    slice_max: int = 1023,
    **fields: Any,
) -> pb.StreamEventsRequest:
    return pb.StreamEventsRequest(
        init=pb.StreamInit(stream_id=stream_id, slice_min=slice_min, slice_max=slice_max, **fields)
    )


@asynccontextmanager
async def events_stream(
    channel: GrpcChannel, init: pb.StreamEventsRequest | None = None
) -> AsyncIterator[EventsStream]:
    """A StreamEvents call; with `init`, sent and answered by StreamStarted first."""
    async with channel.open_stream(
        STREAM_EVENTS, pb.StreamEventsRequest, pb.StreamEventsResponse
    ) as stream:
        if init is not None:
            await stream.send(init)
            assert kind(await stream.receive()) == "started"
        yield stream


def kind(message: pb.StreamEventsResponse | None) -> str:
    """Which case of the response is set ("" for none, "end" for the end of the call)."""
    if message is None:
        return "end"
    return betterproto2.which_one_of(message, "kind")[0]


def records_of(batch: pb.EventBatch) -> list[EventRecord]:
    return decode_events(batch.events, encoding=batch.encoding)


async def receive_events(
    stream: EventsStream, count: int
) -> dict[str, dict[int, tuple[pb.EventPath, EventRecord]]]:
    """Receive batches until `count` distinct events (persistence id, seq nr) came, ignoring
    heartbeats; each event with the path that brought it first."""
    seen: dict[str, dict[int, tuple[pb.EventPath, EventRecord]]] = {}
    with trio.fail_after(10):
        while sum(len(s) for s in seen.values()) < count:
            message = await stream.receive()
            if kind(message) == "heartbeat":
                continue
            assert message is not None and message.batch is not None, message
            for record in records_of(message.batch):
                seen.setdefault(record.persistence_id, {}).setdefault(
                    record.seq_nr, (message.batch.path, record)
                )
    return seen
