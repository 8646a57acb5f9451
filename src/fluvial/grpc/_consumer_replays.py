"""The consumer's replays of gaps: in-stream on the open stream, by the unary `Replay` otherwise.

The runner fills a gap with `Source.replay(pid, first, last)`; `GapReplays.replay` answers it:

- While the source's stream is open (started) and has fewer than
  `ConsumerSettings.replay_look_ahead` in-stream replays outstanding, it sends a
  `StreamReplayRequest` of a fresh correlation id (1, 2, ... per stream) through the stream's
  sender; the receive loop hands `StreamReplays.answered` the REPLAY batches of that
  correlation id, checked and collected, up to the one marked `complete`: the answer.
- Otherwise (no stream: reconnecting, not started yet; the look-ahead full) the unary `Replay`.
- An in-stream replay that ends unanswered, because the producer abandons it
  (`StreamReplayAbandoned`: superseded by a newer request of the entity, or its journal read
  failed), because the stream breaks, or because nothing of it arrived for `call_timeout`,
  keeps what arrived and asks the unary `Replay` for the rest, from the seq nr after the last
  event that arrived: nothing is lost, nothing comes twice.

A replay counts against the look-ahead until its answer completes or ends, even after its
caller stopped waiting (cancelled): the producer still works on it, and the bound is what
keeps a stream's requests from piling up in the producer's queue. Its late batches are
dropped (the runner never got them). REPLAY batches of correlation id 0 (the producer's own
replays of an entity a filter update included) answer no request: they go to the runner like
any batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from fluvial.core.ids import SliceRange
from fluvial.core.records import EventRecord

from ._consumer_calls import UnaryCalls
from ._consumer_wire import batch_of, check_replayed
from ._proto.fluvial import v1 as pb

log = logging.getLogger("fluvial.grpc.consumer")


@attrs.define(eq=False)
class _Outstanding:
    """One in-stream replay: what arrived of it, and whether it is over (`done`)."""

    persistence_id: str
    next_seq_nr: int  # the first seq nr not arrived yet
    last: int
    records: list[EventRecord] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    complete: bool = False
    ended_by: str = ""  # why it is over unanswered
    wanted: bool = True  # its caller still waits
    # When it was asked or its latest batch arrived: the caller's sign of progress.
    last_arrival: float = attrs.field(factory=trio.current_time)


class StreamReplays:
    """The in-stream replays of one open stream (see the module docstring): `request` one,
    `answered` takes what the stream brings of them, `end` when the stream ends.

    `put` queues a request for the stream's sender; `requested` is called once a replay is
    outstanding (the receive loop reads on while one is)."""

    def __init__(
        self,
        put: Callable[[pb.StreamEventsRequest], None],
        look_ahead: int,
        slices: SliceRange,
        *,
        requested: Callable[[], None],
    ) -> None:
        self._put = put
        self._look_ahead = look_ahead
        self._slices = slices
        self._requested = requested
        self._outstanding: dict[int, _Outstanding] = {}
        self._next_correlation_id = 1
        self._ended = False

    @property
    def outstanding(self) -> int:
        """How many replays wait for their answer."""
        return len(self._outstanding)

    def request(self, persistence_id: str, first: int, last: int) -> _Outstanding | None:
        """Ask the producer for `persistence_id`'s events `first..last` on the stream; None
        when the stream ended or the look-ahead is full."""
        if self._ended or len(self._outstanding) >= self._look_ahead:
            return None
        correlation_id = self._next_correlation_id
        self._next_correlation_id += 1
        outstanding = self._outstanding[correlation_id] = _Outstanding(persistence_id, first, last)
        request = pb.StreamReplayRequest(correlation_id, persistence_id, first, last)
        self._put(pb.StreamEventsRequest(replay=request))
        self._requested()
        return outstanding

    def answered(self, kind: str | None, message: object) -> bool:
        """Take a replay's batch or its abandonment from the receive loop; False: neither (a
        REPLAY batch of correlation id 0 is the runner's). ProducerProtocolError for an
        answer that is not of the events asked for."""
        if kind == "replay_abandoned":
            assert isinstance(message, pb.StreamReplayAbandoned)
            reason = pb.ReplayAbandonReason(message.reason).name
            self._over(message.correlation_id, f"abandoned ({reason}: {message.message})")
            return True
        if kind != "batch":
            return False
        assert isinstance(message, pb.EventBatch)
        part = message.replay
        if message.path != pb.EventPath.REPLAY or part is None or part.correlation_id == 0:
            return False
        outstanding = self._outstanding.get(part.correlation_id)
        if outstanding is None:
            return True  # of a replay over already (abandoned, then its last batch in flight)
        outstanding.last_arrival = trio.current_time()
        if outstanding.wanted:
            records, _ = batch_of(message, self._slices)
            check_replayed(
                records, outstanding.persistence_id, outstanding.next_seq_nr, outstanding.last
            )
            outstanding.records.extend(records)
            if records:
                outstanding.next_seq_nr = records[-1].seq_nr + 1
        if part.complete:
            outstanding.complete = True
            self._over(part.correlation_id, "complete")
        return True

    def end(self) -> None:
        """The stream ended: no replay of it will be answered any more."""
        self._ended = True
        for correlation_id in list(self._outstanding):
            self._over(correlation_id, "cut short: the stream ended")

    def _over(self, correlation_id: int, why: str) -> None:
        outstanding = self._outstanding.pop(correlation_id, None)
        if outstanding is not None:  # else not one of this stream's: harmless
            outstanding.ended_by = why
            outstanding.done.set()


class GapReplays:
    """The replays of one source's gaps (see the module docstring): `stream` is the open
    stream's `StreamReplays` while it is started, else None."""

    def __init__(self, calls: UnaryCalls) -> None:
        self.calls = calls
        self.stream: StreamReplays | None = None

    async def replay(self, persistence_id: str, first: int, last: int) -> list[EventRecord]:
        """`persistence_id`'s events `first..last`, in seq nr order, each once."""
        outstanding = (
            None if self.stream is None else self.stream.request(persistence_id, first, last)
        )
        if outstanding is None:
            return await self.calls.replay(persistence_id, first, last)
        try:
            await self._answer(outstanding)
        except BaseException:
            outstanding.wanted = False  # its late batches are dropped (module docstring)
            outstanding.records.clear()
            raise
        if outstanding.complete:
            return outstanding.records
        outstanding.wanted = False  # what comes of it now is the unary call's
        log.info(
            "in-stream replay of %s seq nrs %d..%d %s after %d event(s); the rest by Replay",
            persistence_id,
            first,
            last,
            outstanding.ended_by,
            len(outstanding.records),
        )
        rest = outstanding.next_seq_nr
        if rest > last:
            return outstanding.records
        return outstanding.records + await self.calls.replay(persistence_id, rest, last)

    async def _answer(self, outstanding: _Outstanding) -> None:
        """Until `outstanding` is over, or nothing of it arrived for `call_timeout` (the
        unary call's deadline: a producer stuck reading would keep the runner waiting)."""
        timeout = self.calls.settings.call_timeout
        while trio.current_time() < outstanding.last_arrival + timeout:
            with trio.move_on_at(outstanding.last_arrival + timeout):
                await outstanding.done.wait()
                return
        outstanding.ended_by = f"given up: nothing of it arrived for {timeout}s"
