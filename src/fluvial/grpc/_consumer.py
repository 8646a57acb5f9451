"""The consumer side of replication over gRPC: a producer's stream as a projection's `Source`.

`open_grpc_consumer(host, port)` owns one channel (one HTTP/2 connection) to one producer;
`consumer.source(stream_id, slices, settings)` is its `SourceProvider` method, so that
`serve_projection(consumer, serializers, projection, slices, offsets=store)` runs a projection
(`projection.entity_type` is the stream id) over the producer's events, with its offsets in
the consumer's own store. Every projection and slice-range instance of the process that uses
the consumer shares its channel.

A `GrpcSource` maps the `Source` seam onto the wire protocol (docs/wire-protocol.md):

- `run` opens `StreamEvents` (`_consumer_stream`: one sender task for everything the stream
  carries, a receive loop, the hand-over to the runner) with an Init (stream id, slice range,
  the offset for each slice), reports started once the producer answers `StreamStarted`, and
  hands each `EventBatch`, decoded, to the runner as `(records, path)`. When the stream breaks
  (`GrpcUnavailable`: the connection refused, reset or closed, a keep-alive ping unanswered,
  the producer shutting down; or a stream silent for longer than `heartbeat_timeout`) it opens
  it again after the `Reconnect` backoff, resuming after the last query batch (or
  `QueryProgress`: the producer's query position over what it sent only by LIVE,
  `_consumer_progress`) it handed over: everything before that is in the runner's channel,
  and what the runner has not reached it still receives, so nothing is lost, and what comes
  twice (a live event the query brings again) the runner's offset tracker drops by seq nr.
  Any other error (NOT_FOUND for a stream id the producer does not serve, INVALID_ARGUMENT,
  UNAUTHENTICATED, PERMISSION_DENIED, a TLS handshake that fails, a malformed batch) is raised
  as itself: the runner restarts the instance from its stored offsets with the projection's
  backoff, and a producer that keeps refusing ends it with `ProjectionFailed`.
- The consumer's filter of the stream id (`_consumer_filters`, docs/filters.md) goes in every
  Init; `GrpcConsumer.update_filter` changes it on the open streams, whose receive loop hands
  it the answers (`OpenStream.answered`). A stream id whose filter is or has been non-empty
  judges first sights by `FirstSight.REPLAY_FROM_FIRST`: its filter may have kept an entity's
  earlier events from the consumer. REPLAY batches the producer starts itself (correlation id
  0: an update included an entity) go to the runner as `(records, REPLAY)`.
- `replay` asks on the open stream, up to `replay_look_ahead` at once, and by the unary
  `Replay` otherwise or for the rest of an answer cut short (`_consumer_replays`);
  `load_event` and `event_timestamp` are the unary calls `LoadEvent` and `EventTimestamp`,
  and `latest_event_timestamp` (not part of `Source`) is `LatestEventTimestamp`, for a
  projection's lag. Each unary call is retried while the producer is unavailable, within
  `call_timeout` (`_consumer_calls`); its errors are raised as themselves (the runner
  restarts the instance).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import trio

from fluvial.core.filters import Filter, FilterCriteriaUpdate
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import ConsumerFilterStore, SourceMessage

from ._batch_codec import decode_events
from ._channel import Metadata, open_channel
from ._consumer_calls import UnaryCalls
from ._consumer_filters import ConsumerFilters
from ._consumer_replays import GapReplays
from ._consumer_settings import ConsumerSettings
from ._consumer_stream import EventsStream, Stream, _StreamSilent, serve_stream
from ._consumer_wire import (
    EVENT_TIMESTAMP,
    LATEST_EVENT_TIMESTAMP,
    LOAD_EVENT,
    STREAM_EVENTS,
    ProducerProtocolError,
)
from ._errors import GrpcUnavailable, TlsHandshakeFailed
from ._proto.fluvial import v1 as pb
from ._response_wire import ConsumerCodec

log = logging.getLogger("fluvial.grpc.consumer")

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")


class Channel(Protocol):
    """What a consumer needs of a channel (`fluvial.grpc._channel.GrpcChannel` is one; the
    tests give a fake one to drive reconnects on the virtual clock)."""

    async def unary(
        self, method: str, request: Any, reply_type: type[_Reply], *, metadata: Metadata = ()
    ) -> _Reply: ...

    async def drop_connection(self) -> None: ...

    def open_stream(
        self,
        method: str,
        request_type: type[_Request],
        reply_type: type[_Reply],
        *,
        metadata: Metadata = (),
    ) -> AbstractAsyncContextManager[Stream[_Request, _Reply]]: ...


@asynccontextmanager
async def open_grpc_consumer(
    host: str,
    port: int,
    *,
    settings: ConsumerSettings | None = None,
    filters: Mapping[str, Filter | FilterCriteriaUpdate] | None = None,
    filter_store: ConsumerFilterStore | None = None,
) -> AsyncIterator[GrpcConsumer]:
    """A consumer of the producer at `host`:`port`, with one channel to it, for the block.

    `filters` gives the initial filter of each stream id that has one (a `Filter`, or
    criteria as for `Filter.of`), `filter_store` where the filters are kept (an offset
    store: the one the projections' offsets are in); a filter stored there holds over the
    initial one, being the initial one with every `update_filter` since. Without a store,
    filters live in memory.
    An invalid criterion raises `InvalidFilterCriterion` here.

    Nothing is connected until a source runs or a call is made. A TLS file that cannot be
    used raises `TlsConfigurationError` here. The block's exceptions come out as themselves.
    """
    settings = settings or ConsumerSettings()
    consumer_filters = ConsumerFilters(filters, filter_store)
    codec = ConsumerCodec()
    async with open_channel(host, port, settings=settings.channel, codec=codec) as channel:
        yield GrpcConsumer(channel, settings, filters=consumer_filters)


class GrpcConsumer:
    """The sources of one producer's streams over one shared channel: a `SourceProvider`
    (see the module docstring). Made by `open_grpc_consumer`."""

    def __init__(
        self,
        channel: Channel,
        settings: ConsumerSettings,
        *,
        filters: ConsumerFilters | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.filters = filters or ConsumerFilters()

    def source(
        self, stream_id: str, slices: SliceRange, settings: SourceSettings | None = None
    ) -> GrpcSource:
        """The source of the events of `stream_id` in `slices`. `settings` (the projection's,
        for a local journal) does not apply: the producer reads its journal as it is set up,
        the consumer as its `ConsumerSettings` say."""
        return GrpcSource(self.channel, self.settings, stream_id, slices, filters=self.filters)

    async def filter(self, stream_id: str) -> Filter:
        """The consumer's current filter of `stream_id` (loaded from the filter store on first
        use; no criteria if it has none)."""
        return await self.filters.load(stream_id)

    async def update_filter(self, stream_id: str, update: FilterCriteriaUpdate) -> Filter:
        """Change the filter of `stream_id` on every open stream of it in this process (each
        slice-range instance of each projection), without reconnecting; the filter after it.

        `update` is criteria as for `Filter.updated` (an invalid one raises
        `InvalidFilterCriterion` before anything is done). The update is stored first, then
        sent to each open stream as a `FilterUpdate`, and this returns once every one has
        acknowledged it: events sent after follow the new filter, and entities it includes by
        id with a seq nr n >= 1 are replayed from n. A stream that is reconnecting gets the
        new filter in its next Init. If the producer refuses it, `FilterUpdateRefused` (naming
        the criterion and the producer's reason) is raised and the filter is as it was, stored
        and on every stream. Cancelled while waiting for the acks, the update holds: stored,
        sent, and in every later Init."""
        return await self.filters.update(stream_id, update)


class GrpcSource:
    """The events of one stream id and slice range of a producer: a `Source` (see the module
    docstring). Its `first_sight` rule is `ConsumerSettings.first_sight`."""

    def __init__(
        self,
        channel: Channel,
        settings: ConsumerSettings,
        stream_id: str,
        slices: SliceRange,
        *,
        filters: ConsumerFilters | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.stream_id = stream_id
        self.slices = slices
        self.filters = filters or ConsumerFilters()
        self.calls = UnaryCalls(channel, settings, stream_id, slices)
        self.gaps = GapReplays(self.calls)
        # Where a reopened stream resumes: after the last query batch handed to the runner.
        self.resume_offset = TimestampOffset.start()
        self.reconnects = 0  # streams opened again after one broke, for logs and tests

    @property
    def first_sight(self) -> FirstSight:
        """`ConsumerSettings.first_sight`, or `REPLAY_FROM_FIRST` once the stream id's filter
        is or has been non-empty (see the module docstring)."""
        return self.filters.first_sight(self.stream_id, self.settings.first_sight)

    async def run(
        self,
        offset: TimestampOffset,
        send: trio.MemorySendChannel[SourceMessage],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """See `Source.run` and the module docstring: started once the producer's first
        stream started; reopens a broken stream itself."""
        self.resume_offset = offset
        started = False
        attempt = 0

        def stream_started() -> None:
            nonlocal started, attempt
            attempt = 0
            if not started:
                started = True
                task_status.started()

        def moved(offset: TimestampOffset) -> None:
            self.resume_offset = offset

        while True:
            try:
                await self.filters.load(self.stream_id)
                async with self._open_stream() as stream:
                    await serve_stream(
                        stream,
                        self.settings,
                        self.stream_id,
                        self.slices,
                        self.filters,
                        self.gaps,
                        send,
                        offset=self.resume_offset,
                        moved=moved,
                        started=stream_started,
                    )
                # Only a filter update that had to be undone ends a stream here: reopen it at
                # once, with the current filter in its Init.
                self.reconnects += 1
            except (GrpcUnavailable, _StreamSilent) as error:
                if isinstance(error, TlsHandshakeFailed):
                    raise  # a certificate waiting does not cure: the runner's restarts show it
                delay = self.settings.reconnect.delay(attempt, random.random())
                log.warning(
                    "stream %r (slices %s) broke, reopening in %.2fs from timestamp %d: %s",
                    self.stream_id,
                    self.slices,
                    delay,
                    self.resume_offset.timestamp,
                    error,
                )
                attempt += 1
                if isinstance(error, _StreamSilent):
                    # The connection may be dead without grpclib knowing (keep-alive off, or
                    # slower to tell): a new stream on it would be silent too.
                    await self.channel.drop_connection()
                await trio.sleep(delay)
                self.reconnects += 1

    def _open_stream(self) -> AbstractAsyncContextManager[EventsStream]:
        return self.channel.open_stream(
            STREAM_EVENTS,
            pb.StreamEventsRequest,
            pb.StreamEventsResponse,
            metadata=self.settings.metadata,
        )

    async def replay(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int
    ) -> Sequence[EventRecord]:
        """See `Source.replay`: in-stream on the open stream, else (or for what an in-stream
        answer did not bring) the unary `Replay` (`_consumer_replays`)."""
        return await self.gaps.replay(persistence_id, from_seq_nr, to_seq_nr)

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """See `Source.load_event`: the unary `LoadEvent` (a placeholder when the producer's
        filter or transformation drops the event)."""
        request = pb.LoadEventRequest(
            stream_id=self.stream_id, persistence_id=persistence_id, seq_nr=seq_nr
        )
        reply = await self.calls.call(LOAD_EVENT, request, pb.LoadEventResponse)
        if not reply.events:
            return None
        records = decode_events(reply.events, encoding=int(reply.encoding))
        if not records:
            return None
        record = records[0]
        if len(records) > 1 or (record.persistence_id, record.seq_nr) != (persistence_id, seq_nr):
            raise ProducerProtocolError(
                f"loading {persistence_id} seq nr {seq_nr} answered {len(records)} event(s), "
                f"the first {record.persistence_id} seq nr {record.seq_nr}"
            )
        return record

    async def event_timestamp(self, persistence_id: str, seq_nr: int) -> int | None:
        """See `Source.event_timestamp`: the unary `EventTimestamp`."""
        request = pb.EventTimestampRequest(
            stream_id=self.stream_id, persistence_id=persistence_id, seq_nr=seq_nr
        )
        reply = await self.calls.call(EVENT_TIMESTAMP, request, pb.EventTimestampResponse)
        return reply.timestamp

    async def latest_event_timestamp(self) -> int | None:
        """The timestamp of the stream's latest event in this source's slices (None: it has
        none), from the unary `LatestEventTimestamp`: with the projection's offsets, its lag
        behind the producer."""
        request = pb.LatestEventTimestampRequest(
            stream_id=self.stream_id, slice_min=self.slices.min, slice_max=self.slices.max
        )
        reply = await self.calls.call(
            LATEST_EVENT_TIMESTAMP, request, pb.LatestEventTimestampResponse
        )
        return reply.timestamp
