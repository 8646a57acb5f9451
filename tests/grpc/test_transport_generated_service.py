"""The transport serves betterproto2's generated service base (asyncio methods that call trio
code through the bridge) with its default protobuf codec, and the channel calls it."""

from __future__ import annotations

import pytest
import trio

from fluvial.grpc import GrpcNotFound, GrpcResourceExhausted, ServerSettings
from fluvial.grpc._asyncio_bridge import run_trio
from fluvial.grpc._channel import open_channel
from fluvial.grpc._proto.fluvial.v1 import (
    BatchEncoding,
    EventProducerServiceBase,
    EventTimestampRequest,
    EventTimestampResponse,
    LoadEventRequest,
    LoadEventResponse,
)
from fluvial.grpc._server import serve_grpc

LOAD_EVENT = "/fluvial.v1.EventProducerService/LoadEvent"
EVENT_TIMESTAMP = "/fluvial.v1.EventProducerService/EventTimestamp"
STORED = {("cart|1", 1): 1_700_000_000_000}


async def _timestamp_from_trio(persistence_id: str, seq_nr: int) -> int:
    await trio.lowlevel.checkpoint()  # trio code: the journal's side of a producer
    try:
        return STORED[(persistence_id, seq_nr)]
    except KeyError:
        raise GrpcNotFound(f"no event {persistence_id} #{seq_nr}") from None


class Producer(EventProducerServiceBase):
    async def event_timestamp(self, message: EventTimestampRequest) -> EventTimestampResponse:
        timestamp = await run_trio(_timestamp_from_trio, message.persistence_id, message.seq_nr)
        return EventTimestampResponse(timestamp=timestamp)

    async def load_event(self, message: LoadEventRequest) -> LoadEventResponse:
        return LoadEventResponse(encoding=BatchEncoding(0), events=b"r" * message.seq_nr)


async def test_a_generated_service_base_served_and_called_with_protobuf_messages() -> None:
    settings = ServerSettings(max_receive_message_size=100, max_send_message_size=1000)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_grpc([Producer()], settings=settings, task_status=task_status)
        )
        async with open_channel("127.0.0.1", port) as channel:
            reply = await channel.unary(
                EVENT_TIMESTAMP,
                EventTimestampRequest(stream_id="carts", persistence_id="cart|1", seq_nr=1),
                EventTimestampResponse,
            )
            assert reply.timestamp == 1_700_000_000_000
            with pytest.raises(GrpcNotFound, match=r"no event cart\|2 #2"):
                await channel.unary(
                    EVENT_TIMESTAMP,
                    EventTimestampRequest(stream_id="carts", persistence_id="cart|2", seq_nr=2),
                    EventTimestampResponse,
                )
            loaded = await channel.unary(LOAD_EVENT, LoadEventRequest(seq_nr=10), LoadEventResponse)
            assert loaded.events == b"r" * 10
            with pytest.raises(GrpcResourceExhausted, match="reply is too large"):
                await channel.unary(LOAD_EVENT, LoadEventRequest(seq_nr=2000), LoadEventResponse)
            with pytest.raises(GrpcResourceExhausted, match="max_receive_message_size"):
                await channel.unary(
                    LOAD_EVENT, LoadEventRequest(stream_id="s" * 200), LoadEventResponse
                )
        nursery.cancel_scope.cancel()
