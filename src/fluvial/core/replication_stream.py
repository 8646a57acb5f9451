"""The producer's side of one replication stream, as a state machine that does no I/O.

Everything that decides what a consumer's message does to a stream lives here (with its
values in `replication_stream_messages`, its errors in `replication_stream_errors` and the
replay bound in `replication_stream_replays`), in the style of h11: the gRPC shell converts
each message it receives into a `ConsumerMessage`, calls `ProducerStream.receive`, and does
what the answer says; it never decides on its own.

States: `AWAITING_INIT` (nothing received yet), `STREAMING` (an Init was accepted: events
flow), `ENDED` (the consumer is done, or a message was refused and the stream must end). The
table `_NEXT_STATE` says which message each state takes; any other is refused with the
reason in `_OUT_OF_PLACE`, and the stream ends. A message whose content is bad ends the
stream too (INVALID_ARGUMENT, or NOT_FOUND for an unknown stream id), except a filter update
with invalid criteria, which is refused on its own: the stream and its filter stay.

Filters are not evaluated here: a filter is the fold of its criteria updates, and the stream
only folds them with the `CriteriaFold` it is given (`fluvial.core.filters` brings the real
one; `AppendedCriteria` keeps the updates as they came) and hands the result to the shell.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Final, Generic, Protocol, TypeVar

import attrs

from fluvial.core.errors import FluvialError
from fluvial.core.ids import (
    NUMBER_OF_SLICES,
    InvalidPersistenceId,
    PersistenceId,
    SliceRange,
    slice_for,
)
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_SEQ_NR
from fluvial.core.replication_stream_errors import (
    LocalStreamError,
    RefusalReason,
    RemoteStreamError,
)
from fluvial.core.replication_stream_messages import (
    ConsumerDone,
    ConsumerMessage,
    EndStream,
    FilterChanged,
    FilterRefused,
    FilterUpdate,
    Init,
    Malformed,
    Replay,
    ReplayRequest,
    ReplaysChanged,
    StreamAnswer,
    ValidInit,
)
from fluvial.core.replication_stream_replays import (
    MAX_QUEUED_REPLAYS,
    MAX_RUNNING_REPLAYS,
    ReplayQueue,
)

F = TypeVar("F")
U = TypeVar("U")
U_contra = TypeVar("U_contra", contravariant=True)

# Correlation ids travel as protobuf uint64; 0 marks the replays the producer starts itself.
MAX_CORRELATION_ID: Final = 2**64 - 1


class CriteriaFold(Protocol[F, U_contra]):
    """How a stream's filter takes its criteria: the seam to `fluvial.core.filters`."""

    def empty(self) -> F:
        """The filter before any criteria (everything passes)."""
        ...

    def apply(self, filter: F, criteria: U_contra) -> F:
        """`filter` after `criteria`; applying the same criteria twice changes nothing.

        Raises a `FluvialError` whose message names the invalid criterion (a bad regex, a
        bad topic expression): the stream refuses the update with INVALID_ARGUMENT."""
        ...

    def replays(self, filter: F, criteria: U_contra) -> Sequence[tuple[str, int]]:
        """The replays that `criteria` (valid: `apply` took them) ask of `filter`, as
        (entity id, from seq nr) pairs: the entities they include by id with a seq nr n >= 1
        that `filter` did not hold so (`fluvial.core.filters.Filter.replays`)."""
        ...


class AppendedCriteria(Generic[U]):
    """A `CriteriaFold` that evaluates nothing: the filter is the criteria as they came, in
    order (for streams without filters, and until `fluvial.core.filters` takes its place)."""

    def empty(self) -> tuple[U, ...]:
        """No criteria."""
        return ()

    def apply(self, filter: tuple[U, ...], criteria: U) -> tuple[U, ...]:
        """`criteria` after `filter`'s."""
        return (*filter, criteria)

    def replays(self, filter: tuple[U, ...], criteria: U) -> Sequence[tuple[str, int]]:
        """None: criteria kept as they came say nothing of entities."""
        return ()


class StreamState(enum.Enum):
    """Where a stream is (see the module docstring)."""

    AWAITING_INIT = "awaiting init"
    STREAMING = "streaming"
    ENDED = "ended"


AWAITING_INIT, STREAMING, ENDED = StreamState

# Which message each state takes, and the state it leads to (content checks aside).
_NEXT_STATE: Final[Mapping[StreamState, Mapping[type, StreamState]]] = {
    AWAITING_INIT: {Init: STREAMING},
    STREAMING: {FilterUpdate: STREAMING, ReplayRequest: STREAMING, ConsumerDone: ENDED},
    ENDED: {},
}
# Why each state refuses the messages it does not take (a Malformed is refused everywhere).
_OUT_OF_PLACE: Final[Mapping[StreamState, RefusalReason]] = {
    AWAITING_INIT: RefusalReason.MISSING_INIT,
    STREAMING: RefusalReason.REPEATED_INIT,
    ENDED: RefusalReason.AFTER_END,
}


class ProducerStream(Generic[F, U]):
    """One replication stream, as the producer sees it.

    `entity_types` maps each stream id this producer serves to its entity type; `criteria`
    folds the consumer's filter criteria; `max_replays` bounds the replays that run at once,
    `max_queued_replays` those that wait (`ReplayQueue`: a consumer's request beyond it is
    refused, that request alone).
    `receive` takes each consumer message in order and answers what to do; `replay_finished`
    frees the slot of a replay the shell has finished. Nothing here raises for what the peer
    sent: refusals are answers (`EndStream`, `FilterRefused`) holding a `RemoteStreamError`.
    """

    def __init__(
        self,
        entity_types: Mapping[str, str],
        criteria: CriteriaFold[F, U],
        *,
        max_replays: int = MAX_RUNNING_REPLAYS,
        max_queued_replays: int = MAX_QUEUED_REPLAYS,
    ) -> None:
        self.entity_types = dict(entity_types)
        self.criteria = criteria
        self.state = AWAITING_INIT
        self.init: ValidInit[F] | None = None  # set by the accepted Init
        self.ended: EndStream | None = None  # set when the stream ends
        self.replays = ReplayQueue(max_replays, max_queued_replays)
        # The replays the stream starts itself (a filter update included an entity) answer
        # correlation id 0 on the wire; in the queue each has an id of its own below 0, so
        # that it never meets a consumer's (which are >= 1).
        self._own_replays = 0

    @property
    def filter(self) -> F | None:
        """The stream's current filter (None before Init)."""
        return None if self.init is None else self.init.filter

    def receive(self, message: ConsumerMessage[U]) -> StreamAnswer[F]:
        """What to do for the consumer's next `message` (see the module docstring)."""
        if isinstance(message, Malformed):
            return self._end(RefusalReason.MALFORMED, f"malformed message: {message.what}")
        next_state = _NEXT_STATE[self.state].get(type(message))
        if next_state is None:
            return self._end(_OUT_OF_PLACE[self.state], self._out_of_place(message))
        try:
            answer = self._take(message)
        except RemoteStreamError as error:
            return self._end_with(error)
        self.state = next_state
        if isinstance(answer, EndStream):
            self.ended = answer
        return answer

    def replay_finished(self, correlation_id: int) -> ReplaysChanged:
        """The shell sent every event of the running replay `correlation_id`: which queued
        replays start now. After the stream ended, nothing (the shell's replays end with it).

        LocalStreamError for a replay that is not running."""
        if self.state is ENDED:
            return ReplaysChanged()
        return self.replays.finished(correlation_id)

    def _take(self, message: ConsumerMessage[U]) -> StreamAnswer[F]:
        match message:
            case Init():
                self.init = self._check_init(message)
                return self.init
            case FilterUpdate():
                return self._update_filter(message)
            case ReplayRequest():
                return self.replays.request(self._check_replay(message))
            case ConsumerDone():
                return EndStream()
        raise LocalStreamError(f"not a consumer message: {message!r}")  # not in the table

    def _check_init(self, init: Init[U]) -> ValidInit[F]:
        entity_type = self.entity_types.get(init.stream_id)
        if entity_type is None:
            raise RemoteStreamError(
                RefusalReason.UNKNOWN_STREAM_ID,
                f"Init: this producer serves no stream id {init.stream_id!r}",
            )
        if not 0 <= init.slice_min <= init.slice_max < NUMBER_OF_SLICES:
            raise RemoteStreamError(
                RefusalReason.SLICE_RANGE,
                f"Init: slice range {init.slice_min}..{init.slice_max} is not within "
                f"0..{NUMBER_OF_SLICES - 1} with min <= max",
            )
        slices = SliceRange(init.slice_min, init.slice_max)
        offsets: dict[int, TimestampOffset] = {}
        for given in init.offsets:
            _check_slice_offset(given.slice, given.offset, slices)
            if given.slice in offsets:
                raise RemoteStreamError(
                    RefusalReason.REPEATED_OFFSET,
                    f"Init: two offsets of slice {given.slice}",
                )
            offsets[given.slice] = given.offset
        try:
            filter = self.criteria.apply(self.criteria.empty(), init.criteria)
        except FluvialError as exc:
            raise RemoteStreamError(RefusalReason.INVALID_CRITERIA, f"Init: {exc}") from exc
        return ValidInit(
            stream_id=init.stream_id,
            entity_type=entity_type,
            slices=slices,
            offsets=offsets,
            filter=filter,
            with_payloads=init.with_payloads,
        )

    def _update_filter(self, update: FilterUpdate[U]) -> FilterChanged[F] | FilterRefused:
        assert self.init is not None, "the table takes filter updates only when streaming"
        _check_correlation_id("FilterUpdate", update.correlation_id)
        try:
            filter = self.criteria.apply(self.init.filter, update.criteria)
        except FluvialError as exc:
            error = RemoteStreamError(
                RefusalReason.INVALID_CRITERIA,
                f"FilterUpdate {update.correlation_id}: {exc}; the filter stays as it was",
            )
            return FilterRefused(correlation_id=update.correlation_id, error=error)
        before, self.init = self.init.filter, attrs.evolve(self.init, filter=filter)
        return FilterChanged(
            correlation_id=update.correlation_id,
            filter=filter,
            replays=self._start_own_replays(self.criteria.replays(before, update.criteria)),
        )

    def _start_own_replays(self, wanted: Sequence[tuple[str, int]]) -> ReplaysChanged:
        """Queue a replay, up to the latest event, of each entity of `wanted` that is in the
        stream's slices (the stream of another slice range replays the others); an entity id
        that names no entity of the stream's type (a replicated entity's, which lives under a
        persistence id per replica) replays nothing."""
        assert self.init is not None
        start: list[Replay] = []
        cancel: list[Replay] = []
        superseded: list[Replay] = []
        for entity_id, from_seq_nr in wanted:
            persistence_id = f"{self.init.entity_type}|{entity_id}"
            try:
                check_event_of_stream("", self.init.entity_type, self.init.slices, persistence_id)
                check_seq_nr("", persistence_id, from_seq_nr)
            except RemoteStreamError:
                continue
            self._own_replays -= 1
            replay = Replay(
                correlation_id=self._own_replays,
                persistence_id=persistence_id,
                from_seq_nr=from_seq_nr,
                to_seq_nr=MAX_SEQ_NR,
            )
            changed = self.replays.request(replay, own=True)  # never refused
            start += changed.start
            cancel += changed.cancel
            superseded += changed.superseded
        return ReplaysChanged(
            start=tuple(start), cancel=tuple(cancel), superseded=tuple(superseded)
        )

    def _check_replay(self, request: ReplayRequest) -> Replay:
        assert self.init is not None, "the table takes replay requests only when streaming"
        what = f"ReplayRequest {request.correlation_id}"
        _check_correlation_id("ReplayRequest", request.correlation_id)
        if self.replays.uses(request.correlation_id):
            raise RemoteStreamError(
                RefusalReason.CORRELATION_ID,
                f"{what}: correlation id {request.correlation_id} is in use by a replay "
                "that has not finished",
            )
        check_event_of_stream(what, self.init.entity_type, self.init.slices, request.persistence_id)
        check_seq_nr(what, request.persistence_id, request.from_seq_nr)
        check_seq_nr(what, request.persistence_id, request.to_seq_nr)
        if request.to_seq_nr < request.from_seq_nr:
            raise RemoteStreamError(
                RefusalReason.SEQ_NR_RANGE,
                f"{what}: seq nrs {request.from_seq_nr}..{request.to_seq_nr} of "
                f"{request.persistence_id} are inverted (from > to)",
            )
        return Replay(
            correlation_id=request.correlation_id,
            persistence_id=request.persistence_id,
            from_seq_nr=request.from_seq_nr,
            to_seq_nr=request.to_seq_nr,
        )

    def _out_of_place(self, message: ConsumerMessage[U]) -> str:
        name = type(message).__name__
        if self.state is AWAITING_INIT:
            return f"{name} before Init: a stream starts with an Init"
        if self.state is STREAMING:
            return "a second Init: a stream takes one Init, first"
        assert self.ended is not None
        return f"{name} after the stream ended ({self.ended.status.name})"

    def _end(self, reason: RefusalReason, message: str) -> EndStream:
        return self._end_with(RemoteStreamError(reason, message))

    def _end_with(self, error: RemoteStreamError) -> EndStream:
        if self.state is not ENDED:  # the first end is the one the stream ended with
            self.state = ENDED
            self.ended = EndStream(error=error)
        return EndStream(error=error)


def check_event_of_stream(
    what: str, entity_type: str, slices: SliceRange, persistence_id: str
) -> None:
    """Raise RemoteStreamError unless `persistence_id` is an entity of `entity_type` in
    `slices`: a consumer asks only for the events its stream carries (a producer never
    hands out another entity type's events, whatever id it is asked for)."""
    try:
        parsed = PersistenceId.parse(persistence_id)
    except InvalidPersistenceId as exc:
        raise RemoteStreamError(RefusalReason.PERSISTENCE_ID, f"{what}: {exc}") from None
    if parsed.entity_type != entity_type:
        raise RemoteStreamError(
            RefusalReason.OTHER_ENTITY_TYPE,
            f"{what}: {persistence_id!r} is not an entity of the stream's type {entity_type!r}",
        )
    if (slice_ := slice_for(persistence_id)) not in slices:
        raise RemoteStreamError(
            RefusalReason.OUTSIDE_SLICE_RANGE,
            f"{what}: {persistence_id} is in slice {slice_}, outside the stream's slices {slices}",
        )


def check_seq_nr(what: str, persistence_id: str, seq_nr: int) -> None:
    """Raise RemoteStreamError unless `seq_nr` is one a journal can store (1..MAX_SEQ_NR)."""
    if not 1 <= seq_nr <= MAX_SEQ_NR:
        raise RemoteStreamError(
            RefusalReason.SEQ_NR,
            f"{what}: seq nr {seq_nr} of {persistence_id} is not within 1..{MAX_SEQ_NR}",
        )


def _check_correlation_id(what: str, correlation_id: int) -> None:
    if not 1 <= correlation_id <= MAX_CORRELATION_ID:
        raise RemoteStreamError(
            RefusalReason.CORRELATION_ID,
            f"{what}: correlation id {correlation_id} is not within 1..{MAX_CORRELATION_ID} "
            "(0 answers the replays the producer starts itself)",
        )


def _check_slice_offset(slice_: int, offset: TimestampOffset, slices: SliceRange) -> None:
    if slice_ not in slices:
        raise RemoteStreamError(
            RefusalReason.OFFSET_OUTSIDE_RANGE,
            f"Init: an offset of slice {slice_}, outside the requested slices {slices}",
        )
    if offset.timestamp < 0:
        raise RemoteStreamError(
            RefusalReason.TIMESTAMP,
            f"Init: the offset of slice {slice_} has a negative timestamp {offset.timestamp}",
        )
    for persistence_id, seq_nr in offset.seen.items():
        check_seq_nr(f"Init: the offset of slice {slice_}", persistence_id, seq_nr)
        if slice_for(persistence_id) != slice_:
            raise RemoteStreamError(
                RefusalReason.OFFSET_OF_OTHER_SLICE,
                f"Init: the offset of slice {slice_} names {persistence_id}, which is in "
                f"slice {slice_for(persistence_id)}",
            )
