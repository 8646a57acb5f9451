"""One opened `StreamEvents` stream of a `GrpcSource`, from its Init until it ends.

`serve_stream` runs three tasks under one supervisor (the first failure ends them all and
comes out as itself):

- the sender, the only task that writes to the stream: the Init, then the filter updates
  (`OpenStream.send_update`) and replay requests (`StreamReplays.request`) in the order they
  were put in the stream's `Outbox`;
- the receive loop: `StreamStarted`, then each message in turn: a filter update's answer
  (`OpenStream.answered`), a replay's batch or abandonment (`StreamReplays.answered`), an
  event batch for the runner (checked, `batch_of`), a heartbeat. Nothing arrived for
  `heartbeat_timeout` while it waited for the stream: `_StreamSilent`;
- the hand-over, which gives the runner the batches the receive loop took, in order (the
  receive loop gives one itself when none waits before it and the runner's channel has
  room), and moves the source's resume offset past each query batch it gave (and to each
  `QueryProgress`: the producer's query position over what it sent only by LIVE, whose
  query copies `FollowedLive` makes, `_consumer_progress`).

While no in-stream replay is outstanding, the receive loop waits until the runner has taken a
batch before it reads on, as if it handed the batch over itself: a slow projection holds the
producer back (HTTP/2 flow control) and its waiting is not silence. While one is, it reads
on, holding the batches for the runner, so that the answer the runner waits for can arrive
(the runner asks for a replay in the middle of a batch: the next one would wait for it
forever). What it holds then is what the producer sends before the answer is complete, which
its sender interleaves with the replay's batches. What it held and had not handed over when
the stream breaks is read again: the stream reopens after the last query batch handed over.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import betterproto2
import trio

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.projection._supervision import open_supervisor
from fluvial.projection.api import QueryReached, SourceMessage

from ._consumer_filter_wire import wire_criteria
from ._consumer_filters import ConsumerFilters, OpenStream
from ._consumer_progress import FollowedLive
from ._consumer_replays import GapReplays, StreamReplays
from ._consumer_settings import ConsumerSettings
from ._consumer_wire import (
    STREAM_EVENTS,
    ProducerProtocolError,
    batch_of,
    offset_after,
    progress_offset,
    stream_init,
)
from ._errors import GrpcUnavailable
from ._idle import handle_until_idle
from ._proto.fluvial import v1 as pb

_Sent = TypeVar("_Sent", contravariant=True)
_Received = TypeVar("_Received", covariant=True)


class Stream(Protocol[_Sent, _Received]):
    """One streaming call (`fluvial.grpc._channel.ClientStream`)."""

    async def send(self, message: _Sent) -> None: ...

    async def receive(self) -> _Received | None: ...


EventsStream = Stream[pb.StreamEventsRequest, pb.StreamEventsResponse]


class _StreamSilent(Exception):
    """Nothing arrived on the stream for the heartbeat timeout: it is dead. Private to the
    consumer: `GrpcSource.run` opens the stream again, so it never reaches a user."""


class Outbox:
    """What the stream's sender sends, in the order put. Unbounded, and bounded all the same:
    it holds at most the Init, one filter update of the stream id (they run one at a time)
    and the replay requests the look-ahead allows."""

    def __init__(self) -> None:
        self._put, self._take = trio.open_memory_channel[pb.StreamEventsRequest](math.inf)
        self.init_sent = trio.Event()

    def put(self, message: pb.StreamEventsRequest) -> None:
        self._put.send_nowait(message)

    async def send(self, message: pb.StreamEventsRequest) -> None:
        """`put` (what `OpenStream` sends filter updates with)."""
        self.put(message)

    async def serve(self, stream: EventsStream, init: pb.StreamInit) -> None:
        """Send `init` (then set `init_sent`), then what is put, until cancelled; a send
        that fails ends the stream."""
        await stream.send(pb.StreamEventsRequest(init=init))
        self.init_sent.set()
        async for message in self._take:
            await stream.send(message)


class _Handover:
    """The batches (and `QueryReached`) the receive loop took, each with the resume offset
    past it (query batches, progress), given to the runner in order by `serve`."""

    def __init__(
        self,
        send: trio.MemorySendChannel[SourceMessage],
        moved: Callable[[TimestampOffset], None],
        reading_on: Callable[[], bool],
    ) -> None:
        self._send = send
        self._moved = moved
        self._reading_on = reading_on
        self._pending: deque[tuple[SourceMessage | None, TimestampOffset | None]] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        """Something the waiting tasks wait for may have changed."""
        self._lot.unpark_all()

    async def put(self, batch: SourceMessage | None, offset: TimestampOffset | None) -> None:
        """Queue `batch`; return once the runner took it, or at once while reading on (a put
        cancelled while it waits leaves `batch` queued, for `serve`).

        With nothing queued before it and room in the runner's channel, `batch` goes there
        at once, from this task, and this is no schedule point (as
        `trio.lowlevel.checkpoint_if_cancelled`: cancelled, it sent nothing). `serve` would
        cost two scheduler turns and trio's `send` a third, per batch."""
        if not self._pending:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                if batch is not None:
                    self._send.send_nowait(batch)
            except trio.WouldBlock:
                pass  # the runner is busy: `serve` waits for it, and this while not reading on
            else:
                if offset is not None:
                    self._moved(offset)
                return
        self._pending.append((batch, offset))
        self._lot.unpark_all()
        while self._pending and not self._reading_on():
            await self._lot.park()

    async def serve(self) -> None:
        while True:
            while not self._pending:
                await self._lot.park()
            batch, offset = self._pending[0]
            if batch is not None:
                await self._send.send(batch)
            self._pending.popleft()  # only once sent: a cancelled send sent nothing
            if offset is not None:
                self._moved(offset)
            self._lot.unpark_all()


async def serve_stream(
    stream: EventsStream,
    settings: ConsumerSettings,
    stream_id: str,
    slices: SliceRange,
    filters: ConsumerFilters,
    gaps: GapReplays,
    send: trio.MemorySendChannel[SourceMessage],
    *,
    offset: TimestampOffset,
    moved: Callable[[TimestampOffset], None],
    started: Callable[[], None],
) -> None:
    """Run `stream` (see the module docstring) from `offset`; `started` once the producer
    answered `StreamStarted`, `moved` with the resume offset after each query batch the
    runner took. Returns when a filter update that had to be undone reopens the stream;
    raises `GrpcUnavailable` or `_StreamSilent` when it broke, any other error as itself."""
    outbox = Outbox()
    opened = filters.open(stream_id, outbox)
    replays: StreamReplays | None = None
    try:
        with opened.reopen_scope:
            async with open_supervisor() as supervisor:
                criteria = wire_criteria(opened.filter.criteria())
                init = stream_init(stream_id, slices, offset, criteria)
                supervisor.start_soon(outbox.serve, stream, init)
                opened.init_sent()  # filter updates may follow it now: they go after it
                await supervisor.run(_await_started, stream, settings, outbox, opened)
                if supervisor.failure is not None:
                    return  # raised as the supervisor closes
                started()
                handover = _Handover(
                    send, moved, lambda: replays is not None and replays.outstanding > 0
                )
                replays = StreamReplays(
                    outbox.put, settings.replay_look_ahead, slices, requested=handover.wake
                )
                gaps.stream = replays
                supervisor.start_soon(handover.serve)
                receive = _Receiver(stream, settings, slices, opened, replays, handover, offset)
                await supervisor.run(receive.forward)
    finally:
        gaps.stream = None
        if replays is not None:
            replays.end()
        filters.close(stream_id, opened)


async def _await_started(
    stream: EventsStream, settings: ConsumerSettings, outbox: Outbox, opened: OpenStream
) -> None:
    await outbox.init_sent.wait()  # the producer answers nothing before it
    while True:
        kind, message = await receive_next(stream, settings)
        if kind == "started":
            return
        if kind == "batch":
            raise ProducerProtocolError("the producer sent an event batch before StreamStarted")
        # A filter update's answer, a heartbeat, or a kind newer than this consumer.
        opened.answered(kind, message)


class _Receiver:
    def __init__(
        self,
        stream: EventsStream,
        settings: ConsumerSettings,
        slices: SliceRange,
        opened: OpenStream,
        replays: StreamReplays,
        handover: _Handover,
        offset: TimestampOffset,
    ) -> None:
        self.stream = stream
        self.settings = settings
        self.slices = slices
        self.opened = opened
        self.replays = replays
        self.handover = handover
        self.followed = FollowedLive()  # the LIVE records the QUERY position has not passed
        self.offset = offset  # the resume offset: past the query batches and progress read

    async def forward(self) -> None:
        """Read the stream until it breaks."""
        timeout = self.settings.heartbeat_timeout
        await handle_until_idle(
            self.stream.receive, self._take, lambda: trio.current_time() + timeout
        )
        raise _silent(timeout)

    async def _take(self, response: pb.StreamEventsResponse | None) -> None:
        kind, message = kind_of(response)
        if self.opened.answered(kind, message) or self.replays.answered(kind, message):
            return
        if kind == "batch":
            assert isinstance(message, pb.EventBatch)
            records, path = batch_of(message, self.slices)
            if not records:
                return
            if path is EnvelopeSource.QUERY:
                self.offset = offset_after(self.offset, records)
                await self._query_passed(self.offset, records)
            else:
                await self.handover.put((records, path), None)
                if path is EnvelopeSource.LIVE:
                    self.followed.handed_live(records)
        elif kind == "query_progress":
            assert isinstance(message, pb.QueryProgress)
            self.offset = progress_offset(self.offset, message)
            await self._query_passed(self.offset)
        elif kind == "started":
            raise ProducerProtocolError("the producer sent StreamStarted twice")
        # Heartbeats keep the stream alive; an unknown kind is ignored (producer.proto).

    async def _query_passed(
        self, offset: TimestampOffset, records: Sequence[EventRecord] = ()
    ) -> None:
        """The QUERY position moves to `offset`, over `records` (`_consumer_progress`); after
        a QueryProgress, the runner learns the position too (`QueryReached`): the events up to
        it that the query's copies do not show were left out by the consumer's filter."""
        passed = self.followed.passed(offset, records)
        if records:
            await self.handover.put((passed, EnvelopeSource.QUERY), offset)
            return
        if passed:
            await self.handover.put((passed, EnvelopeSource.QUERY), None)
        await self.handover.put(QueryReached(offset.timestamp), offset)


async def receive_next(
    stream: EventsStream, settings: ConsumerSettings
) -> tuple[str | None, object]:
    """The next message's kind and value; `_StreamSilent` after `heartbeat_timeout`,
    `GrpcUnavailable` if the producer ended the stream (it never does while it serves)."""
    timeout = settings.heartbeat_timeout
    with trio.move_on_after(timeout):
        return kind_of(await stream.receive())
    raise _silent(timeout)


def kind_of(response: pb.StreamEventsResponse | None) -> tuple[str | None, object]:
    """A received message's kind and value (`receive_next`)."""
    if response is None:
        raise GrpcUnavailable("the producer ended the stream", method=STREAM_EVENTS)
    kind, value = betterproto2.which_one_of(response, "kind")
    return kind or None, value


def _silent(timeout: float) -> _StreamSilent:
    return _StreamSilent(f"nothing arrived on the stream for {timeout}s (heartbeat_timeout)")
