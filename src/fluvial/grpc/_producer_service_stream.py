"""One `StreamEvents` call of the producer service: receive a message, ask the stream core,
do what it answered.

The call runs three kinds of task in a nursery of its own:

- the receiving loop (the call's own task): each request becomes a core message
  (`consumer_message`), `ProducerStream.receive` answers, and the answer is carried out:
  `ValidInit` starts the pipeline (`run_producer_stream`), which sends `StreamStarted` once
  its live subscription is open, and then its batches, into the sender's channel;
  `FilterChanged` / `FilterRefused` are acknowledged (and the replays a `FilterChanged`
  started, of the entities it included by id, are run); `ReplaysChanged` goes to
  `StreamReplays`; `EndStream` ends the call with its status;
- a forwarder, which encodes the replays' batches (and a `StreamReplayAbandoned` for a
  consumer's replay superseded, refused by the full queue, or failed);
- one sender, the only task that writes to the call: it takes the next message or batch from
  a channel that holds `buffered_batches - 1` (0 by default: each task that sends to it holds
  its next one), and sends a `Heartbeat` when none came for the heartbeat interval.
  It applies the consumer's filter (`consumer_passes`) to a batch as it sends it, so that
  every event sent after a `FilterUpdateAck` (which travels through the same channel) follows
  the new filter. Replays answer with every event asked for: the consumer's filter is not
  applied to them (the producer's is: placeholders). For a consumer that asked for
  `QueryProgress` (in its Init), it leaves out of QUERY batches what it sent by LIVE, and
  sends the query's position instead (`_producer_progress`): being the one writer, it knows
  what went before.

Backpressure: the sender waits while HTTP/2 flow control says so, the pipeline and the
forwarder wait for the sender (bounded channels), and the journal query for the pipeline; so
a consumer that does not read holds at most a few batches of memory here, and blocks only its
own call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import trio

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.filters import Filter
from fluvial.core.replication_stream import ProducerStream
from fluvial.core.replication_stream_errors import RemoteStreamError, StreamStatus
from fluvial.core.replication_stream_messages import (
    ConsumerDone,
    EndStream,
    FilterChanged,
    FilterRefused,
    FilterUpdate,
    ReplaysChanged,
    ValidInit,
)
from fluvial.nursery_errors import open_service_nursery
from fluvial.projection.api import Batch

from ._errors import GrpcCallFailed, GrpcError, GrpcInvalidArgument, GrpcNotFound
from ._idle import handle_until_idle
from ._producer_progress import SentOnce
from ._producer_replays import (
    ReplayAnswer,
    ReplayBatch,
    ReplayFailed,
    ReplayRefused,
    ReplaySuperseded,
    StreamReplays,
)
from ._producer_stream import run_producer_stream
from ._producer_wire import (
    Criteria,
    Undecodable,
    WireCriteria,
    batch_messages,
    consumer_message,
    consumer_passes,
    refused_criterion,
)
from ._proto.fluvial import v1 as pb
from ._response_wire import HEARTBEAT, Encoded, EncodedResponse, batch_response
from ._server import ServerCall

if TYPE_CHECKING:
    from ._producer_service import Producer

STREAM_EVENTS: Final = "/fluvial.v1.EventProducerService/StreamEvents"
_STARTED: Final = pb.StreamEventsResponse(started=pb.StreamStarted())

Call = ServerCall[pb.StreamEventsRequest | Undecodable, pb.StreamEventsResponse | EncodedResponse]
# What the sender takes: a message as it is, or a batch of the pipeline to filter and encode.
_Outgoing = pb.StreamEventsResponse | EncodedResponse | Batch


def error_of(error: RemoteStreamError) -> GrpcError:
    """The gRPC error a call ends with for a refusal of the core."""
    details = str(error)
    if error.status is StreamStatus.NOT_FOUND:
        return GrpcNotFound(details)
    if error.status is StreamStatus.INVALID_ARGUMENT:
        return GrpcInvalidArgument(details)
    return GrpcCallFailed(details, status=error.status.name, code=error.status.value)


def _asks_for_progress(request: pb.StreamEventsRequest | Undecodable) -> bool:
    """Whether `request` is an Init that asks for QueryProgress (producer.proto)."""
    init = request.init if isinstance(request, pb.StreamEventsRequest) else None
    return init is not None and init.query_progress


def abandoned_message(
    answer: ReplaySuperseded | ReplayRefused | ReplayFailed,
) -> pb.StreamEventsResponse:
    """The `StreamReplayAbandoned` that tells the consumer no more of a replay comes."""
    match answer:
        case ReplaySuperseded():
            reason, message = pb.ReplayAbandonReason.SUPERSEDED, "a newer request of the entity"
        case ReplayRefused():
            reason = pb.ReplayAbandonReason.QUEUE_FULL
            message = f"{answer.max_queued} replays of the stream wait already"
        case ReplayFailed():
            reason, message = pb.ReplayAbandonReason.FAILED, answer.message
    abandoned = pb.StreamReplayAbandoned(answer.correlation_id, reason, message)
    return pb.StreamEventsResponse(replay_abandoned=abandoned)


class StreamEventsCall:
    """The producer's side of one `StreamEvents` call (see the module docstring)."""

    def __init__(self, producer: Producer, call: Call) -> None:
        self.producer = producer
        self.call = call
        self.stream: ProducerStream[Filter, Criteria] = ProducerStream(
            producer.entity_types,
            WireCriteria(),
            max_queued_replays=producer.settings.max_queued_replays,
        )
        # What the sender sends next, from the receiving loop, the pipeline (its batches
        # straight from its batcher) and the replays' forwarder: what waits is at most the
        # buffered batches beyond the one each of those tasks holds.
        self._out, self._out_receive = trio.open_memory_channel[_Outgoing](
            producer.settings.buffered_batches - 1
        )
        self._replays: StreamReplays | None = None
        # The criteria of the latest filter update (a refusal names the one at fault).
        self._update: Criteria = ()
        # Whether the Init asked for QueryProgress; what went LIVE, once streaming.
        self._query_progress = False
        self._sent_once: SentOnce | None = None

    async def run(self) -> None:
        """Serve the call until the consumer ends it (OK) or the core ends it (its status,
        raised as a `GrpcError`)."""
        async with open_service_nursery() as nursery:
            nursery.start_soon(self._send_all)
            while True:
                request = await self.call.receive()
                if request is None:
                    answer = self.stream.receive(ConsumerDone())
                else:
                    message = consumer_message(request)
                    if isinstance(message, FilterUpdate):
                        self._update = message.criteria
                    answer = self.stream.receive(message)
                    if isinstance(answer, ValidInit):
                        self._query_progress = _asks_for_progress(request)
                if isinstance(answer, EndStream):
                    if answer.error is not None:
                        raise error_of(answer.error)
                    nursery.cancel_scope.cancel()
                    return
                await self._carry_out(answer, nursery)

    async def _carry_out(
        self,
        answer: ValidInit[Filter] | FilterChanged[Filter] | FilterRefused | ReplaysChanged,
        nursery: trio.Nursery,
    ) -> None:
        match answer:
            case ValidInit():
                await self._start(answer, nursery)
            case FilterChanged():
                ack = pb.FilterUpdateAck(correlation_id=answer.correlation_id)
                await self._out.send(pb.StreamEventsResponse(filter_update_ack=ack))
                assert self._replays is not None, "filter updates come only when streaming"
                await self._replays.apply(answer.replays)
            case FilterRefused():
                refused = pb.FilterUpdateRefused(
                    correlation_id=answer.correlation_id,
                    status_code=answer.error.status.value,
                    message=str(answer.error),
                    criterion_index=refused_criterion(self._update),
                )
                await self._out.send(pb.StreamEventsResponse(filter_update_refused=refused))
            case ReplaysChanged():
                assert self._replays is not None, "replays are admitted only when streaming"
                await self._replays.apply(answer)

    async def _start(self, init: ValidInit[Filter], nursery: trio.Nursery) -> None:
        producer = self.producer
        source = producer.sources[init.stream_id]
        settings = producer.settings
        replayed, replayed_receive = trio.open_memory_channel[ReplayAnswer](
            settings.buffered_batches
        )
        self._replays = StreamReplays(
            nursery,
            self.stream,
            producer.journal,
            source,
            producer.serializers,
            replayed,
            batch_size=settings.stream.batch_size,
        )
        if self._query_progress:
            delay = settings.stream.progress_delay
            self._sent_once = SentOnce(init.resume_offset(), delay)
        # The pipeline sends StreamStarted once its live subscription is open, before its
        # first batch, into the channel its batches take: it goes before any of them.
        await nursery.start(
            lambda task_status: run_producer_stream(
                producer.journal,
                source,
                init,
                producer.serializers,
                self._out,
                settings=settings.stream,
                started=lambda: self._out.send(_STARTED),
                task_status=task_status,
            )
        )
        nursery.start_soon(self._forward_replays, replayed_receive)

    async def _forward_replays(self, receive: trio.MemoryReceiveChannel[ReplayAnswer]) -> None:
        max_size = self.producer.max_message_size
        async for answer in receive:
            if not isinstance(answer, ReplayBatch):
                # Said only of the consumer's requests: the stream's own replays (ids below
                # 0) were asked by no one, and a newer one or the consumer's gap replay of
                # the entity covers them.
                if answer.correlation_id > 0:
                    await self._out.send(abandoned_message(answer))
                continue
            # The stream's own replays (ids below 0 in its queue) answer correlation id 0.
            correlation_id = max(answer.correlation_id, 0)
            part = pb.ReplayPart(correlation_id, answer.persistence_id, answer.last)
            for batch in batch_messages(
                answer.records, EnvelopeSource.REPLAY, max_size=max_size, replay=part
            ):
                await self._out.send(batch_response(batch))

    async def _send_all(self) -> None:
        interval = self.producer.settings.heartbeat_interval

        def idle_until() -> float:
            sent_once = self._sent_once
            progress_due = sent_once.due if sent_once is not None else math.inf
            return min(trio.current_time() + interval, progress_due)

        while True:
            await handle_until_idle(self._out_receive.receive, self._send, idle_until)
            sent_once = self._sent_once
            if sent_once is not None and sent_once.due <= trio.current_time():
                await self.call.send(sent_once.progress())
            else:
                await self.call.send(HEARTBEAT)

    async def _send(self, outgoing: _Outgoing) -> None:
        if isinstance(outgoing, pb.StreamEventsResponse | Encoded):
            await self.call.send(outgoing)
            return
        filter = self.stream.filter
        assert filter is not None, "batches come only once the Init was accepted"
        records, path = outgoing
        passed = consumer_passes(filter, records)
        sent_once = self._sent_once
        if sent_once is not None:
            if path is EnvelopeSource.LIVE:
                passed = sent_once.live(passed)
            elif path is EnvelopeSource.QUERY:
                passed = sent_once.query(passed, read=records)
        # A batch the filter emptied is not sent: what it excludes need not travel.
        max_size = self.producer.max_message_size
        for batch in batch_messages(passed, path, max_size=max_size) if passed else ():
            await self.call.send(batch_response(batch))
