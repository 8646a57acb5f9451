"""A fake of the consumer's channel (the `Channel` protocol of `fluvial.grpc._consumer`): each
`open_stream` plays the next step of a script, so that tests drive a `GrpcSource` on the
virtual clock and see exactly what it asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.grpc import GrpcUnavailable, Reconnect
from fluvial.grpc._batch_codec import MSGPACK_ROWS_V1, encode_events
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.projection.api import Batch, QueryReached, SourceMessage

SLICES = SliceRange(0, 1023)
NO_JITTER = Reconnect(initial=0.5, maximum=4.0, multiplier=2.0, jitter=0.0)


def record(entity_id: str, seq_nr: int, timestamp: int) -> EventRecord:
    pid = f"Cart|{entity_id}"
    return EventRecord(
        pid,
        seq_nr,
        "Cart",
        slice_for(pid),
        SerializedPayload("added", 1, b"x"),
        timestamp=timestamp,
        write_timestamp=timestamp,
    )


def batches(messages: Iterable[SourceMessage]) -> list[Batch]:
    """The batches among what a source sent its runner (not the `QueryReached`)."""
    return [m for m in messages if not isinstance(m, QueryReached)]


def batch(path: pb.EventPath, records: Sequence[EventRecord]) -> pb.StreamEventsResponse:
    return pb.StreamEventsResponse(
        batch=pb.EventBatch(
            path=path, encoding=pb.BatchEncoding(MSGPACK_ROWS_V1), events=encode_events(records)
        )
    )


STARTED = pb.StreamEventsResponse(started=pb.StreamStarted())

StreamReplayAnswer = Callable[[pb.StreamReplayRequest], Sequence[pb.StreamEventsResponse]]


def _unanswered(request: pb.StreamReplayRequest) -> Sequence[pb.StreamEventsResponse]:
    return ()


def replay_answer(
    request: pb.StreamReplayRequest | pb.ReplayRequest,
    records: Sequence[EventRecord],
    *,
    complete: bool = True,
) -> pb.StreamEventsResponse:
    """The REPLAY batch of `records` answering `request` (correlation id 0 for a unary
    one), the last one if `complete`."""
    correlation_id = request.correlation_id if isinstance(request, pb.StreamReplayRequest) else 0
    part = pb.ReplayPart(correlation_id, request.persistence_id, complete)
    return pb.StreamEventsResponse(
        batch=pb.EventBatch(
            path=pb.EventPath.REPLAY,
            encoding=pb.BatchEncoding(MSGPACK_ROWS_V1),
            events=encode_events(records),
            replay=part,
        )
    )


@attrs.frozen
class Refuse:
    """Opening the stream fails with `error`."""

    error: Exception = attrs.field(factory=lambda: GrpcUnavailable("connection refused"))


@attrs.frozen
class Serve:
    """The stream answers `messages`, then `then`: "break" (the connection is lost) or
    "silent" (nothing more arrives)."""

    messages: Sequence[pb.StreamEventsResponse] = (STARTED,)
    then: str = "silent"


class FakeStream:
    def __init__(self, step: Serve, channel: FakeChannel) -> None:
        self.step = step
        self.channel = channel
        self.pending = list(step.messages)
        self.arrived = trio.lowlevel.ParkingLot()

    async def send(self, message: pb.StreamEventsRequest) -> None:
        await trio.lowlevel.checkpoint()
        if message.replay is not None:
            self.channel.stream_replays.append(message.replay)
            self.pending.extend(self.channel.answer_replay(message.replay))
            self.arrived.unpark_all()
            return
        assert message.init is not None
        self.channel.inits.append(message.init)

    async def receive(self) -> pb.StreamEventsResponse | None:
        await trio.lowlevel.checkpoint()
        if self.pending:
            return self.pending.pop(0)
        if self.step.then == "break":
            raise GrpcUnavailable("the stream was cut")
        while not self.pending:  # silent, but for the answers to the replays it is asked
            await self.arrived.park()
        return self.pending.pop(0)


class FakeChannel:
    """Plays `script`, one step per `open_stream`; records when each was opened and its Init,
    when the connection was dropped, the unary calls, answered by `unary[method]`, and the
    in-stream replay requests, answered on the stream by `stream_replay` (by default never:
    their answers would not arrive while the stream lives)."""

    def __init__(
        self,
        script: Sequence[Refuse | Serve],
        unary: Mapping[str, Callable[[Any], Any]] | None = None,
        stream_replay: StreamReplayAnswer | None = None,
    ) -> None:
        self.script = list(script)
        self.answers = dict(unary or {})
        self.answer_replay = stream_replay or _unanswered
        self.stream_replays: list[pb.StreamReplayRequest] = []
        self.calls: list[tuple[str, Any]] = []
        self.opened_at: list[float] = []
        self.inits: list[pb.StreamInit] = []
        self.dropped_at: list[float] = []

    async def drop_connection(self) -> None:
        self.dropped_at.append(trio.current_time())

    async def unary(self, method: str, request: Any, reply_type: Any, *, metadata: Any = ()) -> Any:
        await trio.lowlevel.checkpoint()
        self.calls.append((method, request))
        return self.answers[method](request)

    @asynccontextmanager
    async def open_stream(
        self, method: str, request_type: Any, reply_type: Any, *, metadata: Any = ()
    ) -> AsyncIterator[Any]:
        self.opened_at.append(trio.current_time())
        step = self.script.pop(0) if self.script else Serve()
        if isinstance(step, Refuse):
            raise step.error
        yield FakeStream(step, self)
