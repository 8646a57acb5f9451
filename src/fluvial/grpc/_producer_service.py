"""`serve_producer`: a journal's event streams served over gRPC (`EventProducerService`).

Each `EventProducerSource` is served under its stream id. `StreamEvents` is driven on
grpclib's stream by `StreamEventsCall` (receiving and sending in tasks of their own); the
unary calls are answered here, each checking its input as the stream core checks a stream's
(an unknown stream id is NOT_FOUND naming it, anything out of range INVALID_ARGUMENT saying
what). All run on the transport's server (`serve_grpc`): TLS, mutual TLS, the auth hook,
keep-alive and message size limits come from its `ServerSettings`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, Final, NoReturn, cast

import attrs
import trio
from grpclib.const import Cardinality

from fluvial.core.errors import UsageError
from fluvial.core.ids import NUMBER_OF_SLICES, SliceRange
from fluvial.core.records import MAX_SEQ_NR, EventRecord
from fluvial.core.replication_stream_errors import RemoteStreamError
from fluvial.core.replication_stream_replays import MAX_QUEUED_REPLAYS
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.api import Journal

from ._auth import AuthHook
from ._batch_codec import MSGPACK_ROWS_V1, encode_events
from ._errors import GrpcInvalidArgument, GrpcNotFound
from ._producer_lookups import event_timestamp, latest_event_timestamp, load_event, replay_batches
from ._producer_service_stream import STREAM_EVENTS, Call, StreamEventsCall, error_of
from ._producer_source import EventProducerSource
from ._producer_stream import ProducerStreamSettings
from ._producer_wire import ProducerCodec, Undecodable, encoded_size, events_budget
from ._proto.fluvial import v1 as pb
from ._server import ServerCall, TrioMethod, serve_grpc, trio_service
from ._settings import ServerSettings

_SERVICE: Final = "/fluvial.v1.EventProducerService/"
LOAD_EVENT: Final = _SERVICE + "LoadEvent"
EVENT_TIMESTAMP: Final = _SERVICE + "EventTimestamp"
LATEST_EVENT_TIMESTAMP: Final = _SERVICE + "LatestEventTimestamp"
REPLAY: Final = _SERVICE + "Replay"


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"ProducerSettings.{attribute.name} must be an int >= 1: {value!r}")


def _at_least_zero(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"ProducerSettings.{attribute.name} must be an int >= 0: {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise UsageError(f"ProducerSettings.{attribute.name} must be positive: {value!r}")


@attrs.frozen(kw_only=True)
class ProducerSettings:
    """How a producer serves its streams.

    - `server`: the transport (TLS, mutual TLS, keep-alive, message size limits); a batch is
      split so that no message exceeds `server.max_send_message_size`.
    - `stream`: how each stream reads the journal and batches (`ProducerStreamSettings`).
    - `heartbeat_interval`: a stream on which nothing was sent for this many seconds gets a
      `Heartbeat` (consumers treat a silent stream as dead after their own timeout: keep
      this well below it).
    - `buffered_batches`: batches a stream holds ready beyond the one being sent; with
      `stream`'s sizes this bounds a stream's memory whatever its consumer does.
    - `max_replay_events`: the most events one `Replay` call answers (it answers
      `complete=False` when it stops early, for this bound or the message size).
    - `max_queued_replays`: the in-stream replays of a stream that may wait behind the 3
      that run. A consumer's request that would wait beyond it is answered at once with a
      `StreamReplayAbandoned` (QUEUE_FULL), and the stream goes on; a replacement of a
      waiting or running entity's request takes no new place. The stream's own replays (a
      filter update included entities) take places too but are never refused.
    """

    server: ServerSettings = attrs.field(factory=ServerSettings)
    stream: ProducerStreamSettings = attrs.field(factory=ProducerStreamSettings)
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    buffered_batches: int = attrs.field(default=1, validator=_at_least_one)
    max_replay_events: int = attrs.field(default=10_000, validator=_at_least_one)
    max_queued_replays: int = attrs.field(default=MAX_QUEUED_REPLAYS, validator=_at_least_zero)


class Producer:
    """What every call of one `serve_producer` shares: the journal, the sources by stream id
    and the settings."""

    def __init__(
        self,
        journal: Journal,
        sources: Iterable[EventProducerSource[Any, Any]],
        serializers: SerializerRegistry,
        settings: ProducerSettings,
    ) -> None:
        self.journal = journal
        self.serializers = serializers
        self.settings = settings
        self.sources: dict[str, EventProducerSource[Any, Any]] = {}
        for source in sources:
            if not isinstance(source, EventProducerSource):
                raise UsageError(f"serve_producer serves EventProducerSources, not {source!r}")
            if source.stream_id in self.sources:
                raise UsageError(f"two sources of stream id {source.stream_id!r}")
            self.sources[source.stream_id] = source
        if not self.sources:
            raise UsageError("serve_producer needs at least one EventProducerSource")
        self.entity_types = {s.stream_id: s.entity_type for s in self.sources.values()}
        self.max_message_size = settings.server.max_send_message_size

    def source(self, call: str, stream_id: str) -> EventProducerSource[Any, Any]:
        """The source of `stream_id`; GrpcNotFound naming it if this producer has none."""
        source = self.sources.get(stream_id)
        if source is None:
            raise GrpcNotFound(f"{call}: this producer serves no stream id {stream_id!r}")
        return source

    async def stream_events(self, call: Call) -> None:
        await StreamEventsCall(self, call).run()

    async def load_event(self, request: pb.LoadEventRequest) -> pb.LoadEventResponse:
        source = self.source("LoadEvent", request.stream_id)
        record = await load_event(
            self.journal, source, self.serializers, request.persistence_id, request.seq_nr
        )
        rows = () if record is None else (record,)
        return pb.LoadEventResponse(
            encoding=pb.BatchEncoding(MSGPACK_ROWS_V1), events=encode_events(rows)
        )

    async def event_timestamp(self, request: pb.EventTimestampRequest) -> pb.EventTimestampResponse:
        source = self.source("EventTimestamp", request.stream_id)
        timestamp = await event_timestamp(
            self.journal, source, request.persistence_id, request.seq_nr
        )
        return pb.EventTimestampResponse(timestamp=timestamp)

    async def latest_event_timestamp(
        self, request: pb.LatestEventTimestampRequest
    ) -> pb.LatestEventTimestampResponse:
        source = self.source("LatestEventTimestamp", request.stream_id)
        if not 0 <= request.slice_min <= request.slice_max < NUMBER_OF_SLICES:
            raise GrpcInvalidArgument(
                f"LatestEventTimestamp: slice range {request.slice_min}..{request.slice_max} "
                f"is not within 0..{NUMBER_OF_SLICES - 1} with min <= max"
            )
        slices = SliceRange(request.slice_min, request.slice_max)
        return pb.LatestEventTimestampResponse(
            timestamp=await latest_event_timestamp(self.journal, source, slices)
        )

    async def replay(self, request: pb.ReplayRequest) -> pb.ReplayResponse:
        source = self.source("Replay", request.stream_id)
        pid = request.persistence_id
        to_seq_nr = MAX_SEQ_NR if request.to_seq_nr is None else request.to_seq_nr
        budget = events_budget(self.max_message_size, pid)
        limit = self.settings.max_replay_events
        records: list[EventRecord] = []
        size, complete = 0, True
        batches = replay_batches(
            self.journal,
            source,
            self.serializers,
            pid,
            request.from_seq_nr,
            to_seq_nr,
            batch_size=min(limit, self.settings.stream.batch_size),
        )
        # An async generator (typed as an iterator): closed at once when the bound cuts it.
        async with contextlib.aclosing(cast(AsyncGenerator[list[EventRecord], None], batches)):
            async for batch in batches:
                for record in batch:
                    size += encoded_size(record)
                    if len(records) == limit or (size > budget and records):
                        complete = False
                        break
                    records.append(record)
                if not complete:
                    break
        return pb.ReplayResponse(
            batch=pb.EventBatch(
                path=pb.EventPath.REPLAY,
                encoding=pb.BatchEncoding(MSGPACK_ROWS_V1),
                events=encode_events(records),
                replay=pb.ReplayPart(0, pid, complete),
            )
        )


def _unary(
    answer: Callable[[Any], Awaitable[Any]],
) -> Callable[[ServerCall[Any, Any]], Awaitable[None]]:
    """A trio handler of a unary call: its request checked and answered by `answer`, a
    refusal of the lookups (`RemoteStreamError`) ending it with the refusal's status."""

    async def handle(call: ServerCall[Any, Any]) -> None:
        request = await call.receive()
        if request is None:
            raise GrpcInvalidArgument("the call ended without its request")
        if isinstance(request, Undecodable):
            raise GrpcInvalidArgument(f"malformed message: {request.what}")
        try:
            reply = await answer(request)
        except RemoteStreamError as error:
            raise error_of(error) from error
        await call.send(reply)

    return handle


def producer_service(producer: Producer) -> Any:
    """The grpclib servable of `EventProducerService` for `producer`."""

    def unary(
        answer: Callable[[Any], Awaitable[Any]], request: type[Any], reply: type[Any]
    ) -> TrioMethod[Any, Any]:
        return TrioMethod(_unary(answer), Cardinality.UNARY_UNARY, request, reply)

    return trio_service(
        {
            STREAM_EVENTS: TrioMethod(
                producer.stream_events,
                Cardinality.STREAM_STREAM,
                pb.StreamEventsRequest,
                pb.StreamEventsResponse,
            ),
            LOAD_EVENT: unary(producer.load_event, pb.LoadEventRequest, pb.LoadEventResponse),
            EVENT_TIMESTAMP: unary(
                producer.event_timestamp, pb.EventTimestampRequest, pb.EventTimestampResponse
            ),
            LATEST_EVENT_TIMESTAMP: unary(
                producer.latest_event_timestamp,
                pb.LatestEventTimestampRequest,
                pb.LatestEventTimestampResponse,
            ),
            REPLAY: unary(producer.replay, pb.ReplayRequest, pb.ReplayResponse),
        }
    )


async def serve_producer(
    journal: Journal,
    sources: Iterable[EventProducerSource[Any, Any]],
    *,
    serializers: SerializerRegistry,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ProducerSettings | None = None,
    auth: AuthHook | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve `sources` (each under its stream id) from `journal` on `host`:`port` until
    cancelled; `nursery.start` returns the bound port (`port=0` picks a free one).

    `serializers` decodes the journal's (internal) events for the sources' transformations
    and filters. `auth` is asked before every call (docs/grpc.md). UsageError for no source
    or two of one stream id; binding fails with the socket's `OSError` and a TLS file with
    `TlsConfigurationError`, before `nursery.start` returns. On cancel every call in flight
    ends with UNAVAILABLE, then it raises Cancelled.
    """
    settings = settings or ProducerSettings()
    producer = Producer(journal, sources, serializers, settings)
    await serve_grpc(
        [producer_service(producer)],
        host=host,
        port=port,
        settings=settings.server,
        auth=auth,
        codec=ProducerCodec(),
        task_status=task_status,
    )
