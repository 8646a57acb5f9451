"""A consumer's filters: one per stream id for the whole process, kept in its database, sent in
every stream's Init and changed in the open streams without reconnecting (docs/filters.md).

`ConsumerFilters` holds, per stream id, the current `Filter` (loaded once from the
`ConsumerFilterStore`, or the initial one given to `open_grpc_consumer` when the store holds
none) and the open streams of that stream id: every slice-range instance of every projection
over it opens one. `update` folds an update into the stored filter first (so that a restart
sends it in the Init), makes it current (so that a stream opening now sends it in its Init),
then sends a `FilterUpdate` of a fresh correlation id on every stream already open and waits
for each answer. A refusal puts the filter back as it was, in the store and in memory, reopens
the streams whose producer holds another filter now (those that acked the update, those that
opened with it in their Init: their new Init carries the old filter) and raises
`FilterUpdateRefused`. A stream that ends before it answers is reopened by its source with the
current filter in its Init, which is as good as an ack. A caller cancelled while it waits for
the answers leaves the update in place (stored, current, sent): only the wait ends.

Updates of one stream id run one at a time (a lock), so a stream is never sent two at once,
and one opened while an update runs carries that update in its Init, since reading the
current filter and joining the open streams happen in one step, as do making an update
current and listing the streams to send it to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import attrs
import trio

from fluvial.core.filters import Filter, FilterCriteriaUpdate, criteria_of
from fluvial.core.filters_criteria import FilterCriterion
from fluvial.core.first_sight import FirstSight
from fluvial.projection.api import ConsumerFilterStore

from ._consumer_filter_wire import wire_criteria
from ._errors import GrpcInvalidArgument
from ._proto.fluvial import v1 as pb

log = logging.getLogger("fluvial.grpc.consumer")


class FilterUpdateRefused(GrpcInvalidArgument):
    """The producer refused a filter update (`GrpcConsumer.update_filter`): the consumer's
    filter of `stream_id` is as it was before the update, in its store and on every stream.

    `criterion` is the update's criterion at fault, `criterion_index` its index in the update
    (both None when the producer named none); `reason` is the producer's message and
    `status_code` the gRPC status it answered (3, INVALID_ARGUMENT)."""

    def __init__(
        self,
        stream_id: str,
        reason: str,
        *,
        criterion: FilterCriterion | None,
        criterion_index: int | None,
        status_code: int,
    ) -> None:
        which = "" if criterion is None else f" criterion {criterion_index} ({criterion!r})"
        super().__init__(f"filter update of stream id {stream_id!r} refused:{which} {reason}")
        self.stream_id = stream_id
        self.reason = reason
        self.criterion = criterion
        self.criterion_index = criterion_index
        self.status_code = status_code


class _Sender(Protocol):
    async def send(self, message: pb.StreamEventsRequest) -> None: ...


@attrs.frozen
class _Acked:
    pass


@attrs.frozen
class _Refused:
    refused: pb.FilterUpdateRefused


@attrs.frozen
class _Ended:
    """The stream ended before it answered: its source reopens it with the current filter."""


_Answer = _Acked | _Refused | _Ended


class OpenStream:
    """One stream of a stream id, from before its Init is sent until it ends: what `update`
    sends updates on, and what the stream's receive loop hands the answers to."""

    def __init__(self, stream: _Sender, filter: Filter) -> None:
        self.stream = stream
        # The filter the producer holds for the stream: its Init's, then each update acked.
        self.filter = filter
        self.ended = False
        self._init_sent = trio.Event()  # or the stream ended: updates may go (or not) now
        self._reopen = trio.CancelScope()  # cancelled: the source reopens the stream at once
        # Per correlation id: set when answered, the answer, and the filter an ack leads to.
        self._waiting: dict[int, tuple[trio.Event, list[_Answer], Filter]] = {}
        self._next_correlation_id = 1

    @property
    def reopen_scope(self) -> trio.CancelScope:
        """The scope the source runs the stream in: cancelled to reopen it."""
        return self._reopen

    def init_sent(self) -> None:
        """The Init went: updates may follow it on the stream."""
        self._init_sent.set()

    def answered(self, kind: str | None, message: object) -> bool:
        """Take a filter update's answer from the receive loop; False: not one."""
        if kind == "filter_update_ack":
            assert isinstance(message, pb.FilterUpdateAck)
            self._resolve(message.correlation_id, _Acked())
        elif kind == "filter_update_refused":
            assert isinstance(message, pb.FilterUpdateRefused)
            self._resolve(message.correlation_id, _Refused(message))
        else:
            return False
        return True

    def end(self) -> None:
        """The stream ended: what it did not answer is as good as acked (see the module)."""
        self.ended = True
        self._init_sent.set()
        for correlation_id in list(self._waiting):
            self._resolve(correlation_id, _Ended())

    def reopen(self) -> None:
        """Make the source reopen the stream now (its next Init carries the current filter)."""
        self._reopen.cancel()

    async def send_update(self, criteria: list[pb.FilterCriterion], after: Filter) -> _Answer:
        """Send `criteria` (which make `after` of the stream's filter) as a `FilterUpdate` of
        a fresh correlation id and wait for its answer."""
        await self._init_sent.wait()
        if self.ended:
            return _Ended()
        correlation_id = self._next_correlation_id
        self._next_correlation_id += 1
        done, answer, _ = self._waiting[correlation_id] = (trio.Event(), [], after)
        update = pb.FilterUpdate(correlation_id=correlation_id, criteria=criteria)
        try:
            await self.stream.send(pb.StreamEventsRequest(filter_update=update))
        except Exception as error:  # the stream broke: its receive loop ends it
            log.info("a filter update did not reach its stream: %s", error)
            self._resolve(correlation_id, _Ended())
        await done.wait()
        return answer[0]

    def _resolve(self, correlation_id: int, answer: _Answer) -> None:
        waiting = self._waiting.pop(correlation_id, None)
        if waiting is None:
            return  # not an update of this stream's: the producer's mistake, harmless here
        done, slot, after = waiting
        if isinstance(answer, _Acked):
            self.filter = after
        slot.append(answer)
        done.set()


class ConsumerFilters:
    """The filters of one consumer process, per stream id (see the module docstring).

    `initial` gives the filter of a stream id for which `store` holds none (the store's
    holds otherwise: it is the fold of the initial filter and every update since); with no
    `store`, filters live in memory only and a restart starts again from `initial`."""

    def __init__(
        self,
        initial: Mapping[str, Filter | FilterCriteriaUpdate] | None = None,
        store: ConsumerFilterStore | None = None,
    ) -> None:
        # Checked now: an invalid criterion is the caller's mistake, raised where it is given.
        self.initial = {
            str(stream_id): given if isinstance(given, Filter) else Filter.of(criteria_of(given))
            for stream_id, given in (initial or {}).items()
        }
        self.store = store
        self._current: dict[str, Filter] = {}
        self._used: set[str] = set()  # stream ids whose filter is or has been non-empty
        self._open: dict[str, list[OpenStream]] = {}
        self._locks: dict[str, trio.Lock] = {}

    def filter(self, stream_id: str) -> Filter | None:
        """The current filter of `stream_id` (None: not loaded yet, before its first stream
        or update)."""
        return self._current.get(stream_id)

    def first_sight(self, stream_id: str, otherwise: FirstSight) -> FirstSight:
        """The first-sight rule of `stream_id`'s sources: `REPLAY_FROM_FIRST` once its filter
        is or has been non-empty (an entity met first above seq nr 1 may have had its earlier
        events filtered out), else `otherwise`."""
        return FirstSight.REPLAY_FROM_FIRST if stream_id in self._used else otherwise

    async def load(self, stream_id: str) -> Filter:
        """The current filter of `stream_id`, loaded from the store on first use (the initial
        one, stored, if the store holds none)."""
        current = self._current.get(stream_id)
        if current is not None:
            return current
        async with self._lock(stream_id):
            return await self._loaded(stream_id)

    def open(self, stream_id: str, stream: _Sender) -> OpenStream:
        """A stream of `stream_id` is about to send its Init: join the open streams, with
        the current filter (`load` it first). `OpenStream.end` it when it ends."""
        opened = OpenStream(stream, self._current.get(stream_id, Filter()))
        self._open.setdefault(stream_id, []).append(opened)
        return opened

    def close(self, stream_id: str, opened: OpenStream) -> None:
        """`opened` ended: leave the open streams."""
        opened.end()
        streams = self._open.get(stream_id, [])
        if opened in streams:
            streams.remove(opened)

    async def update(self, stream_id: str, update: FilterCriteriaUpdate) -> Filter:
        """Apply `update` to the filter of `stream_id` everywhere (see the module docstring);
        the filter after it. FilterUpdateRefused if a producer refused it."""
        criteria = criteria_of(update)
        async with self._lock(stream_id):
            before = await self._loaded(stream_id)
            if self.store is not None:
                _, after = await self.store.update_consumer_filter(stream_id, criteria)
            else:
                after = before.updated(criteria)
            self._make_current(stream_id, after)
            streams = [s for s in self._open.get(stream_id, []) if s.filter != after]
            if not streams:
                return after
            answers = await _send_to_all(streams, wire_criteria(criteria), after)
            refused = [a.refused for a in answers.values() if isinstance(a, _Refused)]
            if not refused:
                return after
            # Back as it was: stored, current, and on the streams that hold another filter
            # (those that acked, and those that opened with the update in their Init).
            if self.store is not None:
                await self.store.save_consumer_filter(stream_id, before)
            self._current[stream_id] = before
            for stream in self._open.get(stream_id, []):
                if stream.filter != before:
                    stream.reopen()
            raise _refusal(stream_id, criteria, refused[0])

    async def _loaded(self, stream_id: str) -> Filter:
        current = self._current.get(stream_id)
        if current is not None:
            return current
        stored = None if self.store is None else await self.store.load_consumer_filter(stream_id)
        initial = self.initial.get(stream_id)
        if stored is None:
            stored = initial or Filter()
            if self.store is not None and not stored.empty:
                await self.store.save_consumer_filter(stream_id, stored)
        else:
            self._used.add(stream_id)  # stored once: it was non-empty then
            if initial is not None and initial != stored:
                log.info(
                    "stream id %r: the stored filter holds, not the initial one given (it is "
                    "the initial filter with the updates since; update_filter changes it)",
                    stream_id,
                )
        self._make_current(stream_id, stored)
        return stored

    def _make_current(self, stream_id: str, filter: Filter) -> None:
        self._current[stream_id] = filter
        if not filter.empty:
            self._used.add(stream_id)

    def _lock(self, stream_id: str) -> trio.Lock:
        return self._locks.setdefault(stream_id, trio.Lock())


def _refusal(
    stream_id: str, criteria: tuple[FilterCriterion, ...], refused: pb.FilterUpdateRefused
) -> FilterUpdateRefused:
    index = refused.criterion_index
    if index is not None and not 0 <= index < len(criteria):
        index = None  # not one of the update's: the producer's mistake
    return FilterUpdateRefused(
        stream_id,
        refused.message,
        criterion=None if index is None else criteria[index],
        criterion_index=index,
        status_code=refused.status_code,
    )


async def _send_to_all(
    streams: list[OpenStream], criteria: list[pb.FilterCriterion], after: Filter
) -> dict[OpenStream, _Answer]:
    answers: dict[OpenStream, _Answer] = {}

    async def send(stream: OpenStream) -> None:
        answers[stream] = await stream.send_update(criteria, after)

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(send, stream)
    return answers
