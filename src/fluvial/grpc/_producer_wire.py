"""The producer service's conversions between protobuf messages and the stream core's values.

Inbound, nothing is taken on trust: `ProducerCodec` hands the service an `Undecodable` (with
what was wrong) instead of raising for bytes that are not a protobuf message, and
`consumer_message` turns each `StreamEventsRequest` into the core's `ConsumerMessage` without
checking its content (the core does: `fluvial.core.replication_stream`). Outbound,
`batch_messages` encodes a batch of records (`_batch_codec`) into as many `EventBatch`
messages as it takes to keep each below the send limit.

A consumer's filter criteria become `fluvial.core.filters` criteria in `WireCriteria`, the
`CriteriaFold` the stream core folds them with: the stream's filter is a `Filter`, and
`consumer_passes` asks it about each record the stream would send.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

import attrs
import betterproto2
from grpclib.encoding.base import CodecBase

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import DataError
from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import (
    ExcludeEntityIds,
    ExcludeRegexEntityIds,
    ExcludeTags,
    FilterCriterion,
    IncludeEntityIds,
    IncludeRegexEntityIds,
    IncludeTags,
    IncludeTopics,
    InvalidFilterCriterion,
    RemoveExcludeEntityIds,
    RemoveExcludeRegexEntityIds,
    RemoveExcludeTags,
    RemoveIncludeEntityIds,
    RemoveIncludeRegexEntityIds,
    RemoveIncludeTags,
    RemoveIncludeTopics,
)
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_SEQ_NR, EventRecord
from fluvial.core.replication_stream_messages import (
    ConsumerMessage,
    FilterUpdate,
    Init,
    Malformed,
    ReplayRequest,
    SliceOffset,
)

from ._batch_codec import MSGPACK_ROWS_V1, encode_events
from ._errors import GrpcUnimplemented, MessageTooLarge
from ._proto.fluvial import v1 as pb
from ._response_wire import encode_message

Criteria = tuple[pb.FilterCriterion, ...]
"""One update of a consumer's filter, as the wire carries it: criteria in order."""

# Room in a message for everything around its encoded events (tags, lengths, the replay part
# without its persistence id): a little more than protobuf needs.
_MESSAGE_OVERHEAD: Final = 64

PATHS: Final[dict[EnvelopeSource, pb.EventPath]] = {
    EnvelopeSource.QUERY: pb.EventPath.QUERY,
    EnvelopeSource.LIVE: pb.EventPath.LIVE,
    EnvelopeSource.BACKTRACKING: pb.EventPath.BACKTRACKING,
    EnvelopeSource.REPLAY: pb.EventPath.REPLAY,
}


@attrs.frozen
class Undecodable:
    """Received bytes that are not a message of the expected type; `what` says why."""

    what: str


class ProducerCodec(CodecBase):
    """protobuf for betterproto2 messages and `Encoded` ones (of the call's reply type); a
    received message that cannot be read decodes to `Undecodable` rather than raising inside
    grpclib, so that the service ends that call with INVALID_ARGUMENT and a message saying
    what was wrong."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return encode_message(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        name = getattr(message_type, "__name__", repr(message_type))
        problem = wire_format_problem(bytes(data))
        if problem is not None:
            return Undecodable(f"{name}: not a protobuf message ({problem})")
        try:
            return message_type.parse(data)
        except Exception as exc:  # betterproto2 raises what its field readers raise
            return Undecodable(f"{name}: not a protobuf message ({exc})")


def wire_format_problem(data: bytes) -> str | None:
    """What makes `data` not protobuf's wire format at its top level (an unterminated varint,
    a length past the end, a wire type that does not exist), or None.

    betterproto2's parser reads much garbage as an empty message (an unknown field, a short
    length taken as it is), which would make a peer's noise look like a request of no kind."""
    position, end = 0, len(data)

    def varint() -> int:
        nonlocal position
        value, shift = 0, 0
        while True:
            if position >= end:
                raise ValueError(f"a varint runs past the end at byte {position}")
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift >= 70:
                raise ValueError(f"a varint longer than 10 bytes at byte {position}")

    try:
        while position < end:
            start = position
            key = varint()
            wire_type, field = key & 7, key >> 3
            if field == 0:
                return f"field number 0 at byte {start}"
            if wire_type == 0:
                varint()
            elif wire_type == 1 or wire_type == 5:
                position += 8 if wire_type == 1 else 4
            elif wire_type == 2:
                length = varint()  # read before `position`, which it moves
                position += length
            else:
                return f"wire type {wire_type} of field {field} at byte {start}"
            if position > end:
                return f"field {field} at byte {start} runs past the end ({end} bytes)"
    except ValueError as exc:
        return str(exc)
    return None


def consumer_message(
    request: pb.StreamEventsRequest | Undecodable,
) -> ConsumerMessage[Criteria]:
    """The core's value for one received request, content unchecked.

    GrpcUnimplemented for a request of no kind this producer knows (a newer consumer's),
    as producer.proto says."""
    if isinstance(request, Undecodable):
        return Malformed(what=request.what)
    kind, value = betterproto2.which_one_of(request, "kind")
    if isinstance(value, pb.StreamInit):
        return Init(
            stream_id=value.stream_id,
            slice_min=value.slice_min,
            slice_max=value.slice_max,
            offsets=tuple(
                SliceOffset(slice=o.slice, offset=TimestampOffset(o.timestamp, dict(o.seen)))
                for o in value.offsets
            ),
            criteria=tuple(value.filter),
            with_payloads=not value.omit_payloads,
        )
    if isinstance(value, pb.FilterUpdate):
        return FilterUpdate(correlation_id=value.correlation_id, criteria=tuple(value.criteria))
    if isinstance(value, pb.StreamReplayRequest):
        return ReplayRequest(
            correlation_id=value.correlation_id,
            persistence_id=value.persistence_id,
            from_seq_nr=value.from_seq_nr,
            to_seq_nr=MAX_SEQ_NR if value.to_seq_nr is None else value.to_seq_nr,
        )
    raise GrpcUnimplemented(
        f"a StreamEventsRequest of no kind this producer knows ({kind or 'none set'}): "
        "a newer consumer's request"
    )


class InvalidCriterion(DataError):
    """A consumer's filter criterion the producer cannot take: one of no kind (a newer
    consumer's), or a value its criterion refuses (a bad regex or topic expression)."""


# Each wire criterion with a list of strings, and the core criterion it is.
_STRINGS_CRITERIA: Final[dict[str, tuple[str, Any]]] = {
    "exclude_tags": ("tags", ExcludeTags),
    "remove_exclude_tags": ("tags", RemoveExcludeTags),
    "include_tags": ("tags", IncludeTags),
    "remove_include_tags": ("tags", RemoveIncludeTags),
    "exclude_entity_ids": ("entity_ids", ExcludeEntityIds),
    "remove_exclude_entity_ids": ("entity_ids", RemoveExcludeEntityIds),
    "remove_include_entity_ids": ("entity_ids", RemoveIncludeEntityIds),
    "exclude_regexes": ("regexes", ExcludeRegexEntityIds),
    "remove_exclude_regexes": ("regexes", RemoveExcludeRegexEntityIds),
    "include_regexes": ("regexes", IncludeRegexEntityIds),
    "remove_include_regexes": ("regexes", RemoveIncludeRegexEntityIds),
    "include_topics": ("topics", IncludeTopics),
    "remove_include_topics": ("topics", RemoveIncludeTopics),
}


def core_criteria(index: int, criterion: pb.FilterCriterion) -> list[FilterCriterion]:
    """The core's criteria for the wire's `criterion` (number `index` of its update): one, or
    one `IncludeEntityIds` per included entity (each has its own seq nr).

    InvalidCriterion naming the index for a criterion of no kind or a value it refuses."""
    kind, value = betterproto2.which_one_of(criterion, "kind")
    try:
        if isinstance(value, pb.IncludeEntityIds):
            return [IncludeEntityIds({e.entity_id}, e.seq_nr) for e in value.entity_ids]
        if value is None or kind not in _STRINGS_CRITERIA:
            raise InvalidCriterion(
                f"filter criterion {index} has no kind set (a kind newer than this producer knows)"
            )
        field, make = _STRINGS_CRITERIA[kind]
        return [make(frozenset(getattr(value, field)))]
    except InvalidFilterCriterion as exc:
        raise InvalidCriterion(f"filter criterion {index} ({kind}): {exc}") from None


class WireCriteria:
    """The `CriteriaFold` of the wire's criteria into a `Filter`. An update with a criterion
    the producer cannot take is refused whole, naming the criterion, so that a consumer never
    believes a filter holds that does not (filters.proto)."""

    def empty(self) -> Filter:
        """No criteria: everything passes."""
        return Filter()

    def apply(self, filter: Filter, criteria: Criteria) -> Filter:
        """`filter` after `criteria`, in order; InvalidCriterion naming the first it refuses."""
        return filter.updated(_core_update(criteria))

    def replays(self, filter: Filter, criteria: Criteria) -> list[tuple[str, int]]:
        """The entities `criteria` include by id with a seq nr >= 1 that `filter` did not
        hold so, each with its seq nr (`Filter.replays`)."""
        return [(r.entity_id, r.from_seq_nr) for r in filter.replays(_core_update(criteria))]


def _core_update(criteria: Criteria) -> list[FilterCriterion]:
    return [c for index, wire in enumerate(criteria) for c in core_criteria(index, wire)]


def refused_criterion(criteria: Criteria) -> int | None:
    """The index of the first of `criteria` that `WireCriteria` refuses, if one is."""
    for index, criterion in enumerate(criteria):
        try:
            core_criteria(index, criterion)
        except InvalidCriterion:
            return index
    return None


def consumer_passes(filter: Filter, records: Sequence[EventRecord]) -> list[EventRecord]:
    """The records of `records` that the consumer's `filter` lets pass; the others need not
    travel (the producer's own filter made placeholders of what it drops, before this)."""
    if filter.empty:
        return list(records)
    return [r for r in records if filter.matches(_entity_id(r), r.tags)]


def _entity_id(record: EventRecord) -> str:
    # EventEnvelope.entity_id's rule, for a record: a replicated entity's id is the same at
    # every replica (what lies between the first and the last "|").
    rest = record.persistence_id.partition("|")[2]
    return rest if record.replication is None else rest.rpartition("|")[0]


def batch_messages(
    records: Sequence[EventRecord],
    path: EnvelopeSource,
    *,
    max_size: int,
    replay: pb.ReplayPart | None = None,
) -> Iterator[pb.EventBatch]:
    """`records` of `path` as `EventBatch`es in order, each encoded below `max_size` bytes
    (a batch too large is split in halves). For a replay, `replay` marks the last part
    `complete` as it is marked, the others not.

    MessageTooLarge if one event alone does not fit."""
    budget = max_size - _MESSAGE_OVERHEAD - (len(replay.persistence_id) if replay else 0)
    parts = list(_encoded_parts(records, budget, max_size))
    for index, events in enumerate(parts):
        part = None
        if replay is not None:
            complete = replay.complete and index == len(parts) - 1
            part = pb.ReplayPart(replay.correlation_id, replay.persistence_id, complete)
        yield pb.EventBatch(
            path=PATHS[path], encoding=pb.BatchEncoding(MSGPACK_ROWS_V1), events=events, replay=part
        )


def _encoded_parts(records: Sequence[EventRecord], budget: int, max_size: int) -> Iterator[bytes]:
    events = encode_events(records)
    if len(events) <= budget:
        yield events
        return
    if len(records) == 1:
        # The transport's own error for a reply too large: RESOURCE_EXHAUSTED, logged.
        raise MessageTooLarge(size=len(events), limit=max_size, message_type="EventBatch")
    half = len(records) // 2
    yield from _encoded_parts(records[:half], budget, max_size)
    yield from _encoded_parts(records[half:], budget, max_size)


def encoded_size(record: EventRecord) -> int:
    """How many bytes `record` adds to an encoded batch (its row)."""
    return len(encode_events((record,))) - 1  # less the one-byte header of a 1-row array


def events_budget(max_size: int, persistence_id: str = "") -> int:
    """How many bytes of encoded rows fit in a message of at most `max_size` bytes."""
    return max_size - _MESSAGE_OVERHEAD - len(persistence_id) - 5  # a 5-byte array header
