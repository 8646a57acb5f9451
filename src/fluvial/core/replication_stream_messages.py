"""What a consumer sends on a replication stream, and what the producer's stream core answers.

The messages (`Init`, `FilterUpdate`, `ReplayRequest`, `ConsumerDone`, `Malformed`) are the
wire's control messages as plain values: the gRPC shell converts each protobuf message into
one of these and hands it to `ProducerStream.receive`. They hold what the peer sent, unchecked:
checking it is the stream core's job, which refuses bad content with a `RemoteStreamError`
naming what was wrong (a constructor that raised would turn the peer's mistake into a local
one). So their fields are plain ints and strings where the peer might send nonsense (a slice
range as two ints, not a `SliceRange`, which refuses 2000 by raising).

The answers (`ValidInit`, `FilterChanged`, `FilterRefused`, `ReplaysChanged`, `EndStream`) are
what the shell does next, as data: start the pipeline, answer the update, run or cancel
replays, end the stream with a status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

import attrs

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import OffsetTracker
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.replication_stream_errors import RemoteStreamError, StreamStatus

F = TypeVar("F")  # the stream's filter (the fold of its criteria updates)
U = TypeVar("U")  # one update of filter criteria, as the consumer sends it


@attrs.frozen(kw_only=True)
class SliceOffset:
    """The consumer's offset in one slice: where its query stands there."""

    slice: int
    offset: TimestampOffset


@attrs.frozen(kw_only=True)
class Init(Generic[U]):
    """The first message of a stream: which stream, which slices, from where, with which
    filter criteria, and whether events come with their payloads (without: the consumer loads
    the payloads of the events it accepts, one at a time)."""

    stream_id: str
    slice_min: int
    slice_max: int
    offsets: Sequence[SliceOffset] = ()
    criteria: U
    with_payloads: bool = True


@attrs.frozen(kw_only=True)
class FilterUpdate(Generic[U]):
    """A change of the consumer's filter on an open stream, answered by `correlation_id`."""

    correlation_id: int
    criteria: U


@attrs.frozen(kw_only=True)
class ReplayRequest:
    """Replay one entity's events `from_seq_nr..to_seq_nr` (inclusive) on the stream,
    answered by `correlation_id`."""

    correlation_id: int
    persistence_id: str
    from_seq_nr: int
    to_seq_nr: int


@attrs.frozen
class ConsumerDone:
    """The consumer closed its side of the stream (it sends nothing more)."""


@attrs.frozen(kw_only=True)
class Malformed:
    """A message the transport could not decode; `what` says what it could not."""

    what: str


ConsumerMessage = Init[U] | FilterUpdate[U] | ReplayRequest | ConsumerDone | Malformed


@attrs.frozen(kw_only=True)
class ValidInit(Generic[F]):
    """An accepted Init: start streaming `entity_type`'s events of `slices` after `offsets`
    (per slice) through `filter`, with payloads or not."""

    stream_id: str
    entity_type: str
    slices: SliceRange
    offsets: Mapping[int, TimestampOffset]
    filter: F
    with_payloads: bool

    def resume_offset(self) -> TimestampOffset:
        """Where the journal query starts: the earliest of the slice offsets (the start if a
        slice has none), as the consumer's own tracker computes it; what a later slice has
        seen already comes again and the consumer drops it by seq nr."""
        return OffsetTracker(self.slices, slice_offsets=self.offsets).resume_offset()

    def has_seen(self, record: EventRecord) -> bool:
        """Whether the consumer's offset in `record`'s slice is past it: its query there
        delivered it already, so the producer need not send it again (the query resumes
        from the earliest slice offset, behind what the later slices have seen)."""
        offset = self.offsets.get(record.slice)
        return offset is not None and not offset.is_behind(record)

    def seen_until(self) -> int:
        """The latest timestamp of the slice offsets: no record after it `has_seen`."""
        return max((offset.timestamp for offset in self.offsets.values()), default=0)


@attrs.frozen(kw_only=True)
class FilterChanged(Generic[F]):
    """A filter update was applied: the stream's filter is now `filter`; acknowledge
    `correlation_id`, then carry out `replays`: the replays the update started of the
    entities it included by id with a seq nr >= 1, which answer correlation id 0 on the wire
    (their ids in the queue are below 0)."""

    correlation_id: int
    filter: F
    replays: ReplaysChanged = attrs.field(factory=lambda: ReplaysChanged())


@attrs.frozen(kw_only=True)
class FilterRefused:
    """A filter update was refused (`error` names the criterion); the stream and its filter
    stay as they were: answer `correlation_id` with `error.status` and its message."""

    correlation_id: int
    error: RemoteStreamError


@attrs.frozen(kw_only=True)
class Replay:
    """An accepted replay: read `persistence_id`'s events `from_seq_nr..to_seq_nr`, send
    them answering `correlation_id`."""

    correlation_id: int
    persistence_id: str
    from_seq_nr: int
    to_seq_nr: int


@attrs.frozen(kw_only=True)
class ReplaysChanged:
    """What to do with replays now: `start` these, `cancel` these running ones, and tell the
    consumer that these requests were `superseded` (a newer replay of the same entity took
    their place: they will not be answered with events) or `refused` (the stream's replay
    queue was full: they were never admitted, and the stream goes on)."""

    start: tuple[Replay, ...] = ()
    cancel: tuple[Replay, ...] = ()
    superseded: tuple[Replay, ...] = ()
    refused: tuple[Replay, ...] = ()


@attrs.frozen(kw_only=True)
class EndStream:
    """End the stream: with OK when `error` is None (the consumer is done), else with
    `error.status` and its message. Every running replay ends with it."""

    error: RemoteStreamError | None = None

    @property
    def status(self) -> StreamStatus:
        """The status to end the stream with."""
        return StreamStatus.OK if self.error is None else self.error.status


StreamAnswer = ValidInit[F] | FilterChanged[F] | FilterRefused | ReplaysChanged | EndStream
