"""The event batch encoding of the wire protocol: `EventRecord`s to one `bytes` value and back.

An `EventBatch` message carries its events in one bytes field, encoded as msgpack rows
(`BATCH_ENCODING_MSGPACK_ROWS_V1`; proto/fluvial/v1/events.proto documents the layout for
other languages, docs/wire-protocol.md explains it). One msgspec call encodes or decodes a
whole batch in C, where betterproto2 would run its pure-Python field loop for every field of
every event (benchmarks/bench_grpc_encoding.py measures both).

The bytes come from the network, so nothing of them is taken on trust: `decode_events` checks
every value's type and range and raises `InvalidEventBatch` naming the row, the event and the
field, never a bare msgspec error. Whether an event's slice is its persistence id's, or its
seq nr the one a consumer expects, is for the one that stores or admits it to check
(`check_from_elsewhere`, the offset tracker): the decoder only checks that each value can be.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

from fluvial.core.errors import DataError
from fluvial.core.ids import NUMBER_OF_SLICES, InvalidPersistenceId, ReplicatedPersistenceId
from fluvial.core.records import MAX_SEQ_NR, MAX_TIMESTAMP, EventRecord
from fluvial.core.replication_metadata import (
    InvalidReplicationMetadata,
    ReplicationMetadata,
    VersionVector,
)
from fluvial.core.serialization import SerializedPayload

# The value of `BatchEncoding.MSGPACK_ROWS_V1` (events.proto), the one encoding there is.
MSGPACK_ROWS_V1 = 1


class InvalidEventBatch(DataError):
    """Bytes received as an event batch that are not one: not msgpack, not the layout of
    events.proto, or a value that cannot be (a slice outside 0..1023, a seq nr below 1, a
    persistence id without its entity type). The message names the row and the field."""


_SeqNr = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ_NR)]
_Timestamp = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMESTAMP)]
_Slice = Annotated[int, msgspec.Meta(ge=0, le=NUMBER_OF_SLICES - 1)]
_Counter = Annotated[int, msgspec.Meta(ge=1)]


# The rows as msgspec decodes them: array-like Structs, so that a row longer than these fields
# (a later version's, events.proto's evolution rule) decodes with its extra elements ignored.
class _WirePayload(msgspec.Struct, array_like=True, frozen=True, gc=False):
    manifest: str
    version: Annotated[int, msgspec.Meta(ge=1)]
    data: bytes


class _WireReplication(msgspec.Struct, array_like=True, frozen=True, gc=False):
    origin_replica: str
    origin_seq_nr: _SeqNr
    version_vector: tuple[tuple[str, _Counter], ...]


class _WireRow(msgspec.Struct, array_like=True, frozen=True, gc=False):
    persistence_id: str
    seq_nr: _SeqNr
    entity_type: str
    slice: _Slice
    payload: _WirePayload | None
    tags: tuple[str, ...]  # a frozenset made only when not empty: most events have no tags
    timestamp: _Timestamp
    write_timestamp: _Timestamp
    replication: _WireReplication | None


_FIELDS = tuple(_WireRow.__struct_fields__)
_PAYLOAD_FIELDS = tuple(_WirePayload.__struct_fields__)
_REPLICATION_FIELDS = tuple(_WireReplication.__struct_fields__)

_encode = msgspec.msgpack.Encoder().encode
_decode_rows = msgspec.msgpack.Decoder(list[_WireRow]).decode
_decode_any = msgspec.msgpack.Decoder().decode
_UNKNOWN = object()
_NO_TAGS: frozenset[str] = frozenset()
_PATH = re.compile(r" - at `\$((?:\[\d+\])*)`$")


def encode_events(records: Sequence[EventRecord]) -> bytes:
    """`records` as one batch value (events.proto's `BATCH_ENCODING_MSGPACK_ROWS_V1`), in order.

    Raises `InvalidEventBatch` for a value the encoding cannot hold (an int beyond 64 bits, a
    string that is not UTF-8: a lone surrogate); the records of a journal always fit.
    """
    rows = [
        (
            r.persistence_id,
            r.seq_nr,
            r.entity_type,
            r.slice,
            None if (p := r.payload) is None else (p.manifest, p.version, p.data),
            r.tags,
            r.timestamp,
            r.write_timestamp,
            None
            if (m := r.replication) is None
            else (m.origin_replica, m.origin_seq_nr, m.version_vector.counters),
        )
        for r in records
    ]
    try:
        return _encode(rows)
    except (OverflowError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidEventBatch(f"cannot encode an event batch: {exc}") from None


def decode_events(data: bytes, *, encoding: int = MSGPACK_ROWS_V1) -> list[EventRecord]:
    """The records of a batch that `encode_events` (or any encoder of events.proto's layout)
    made, in order; `encoding` is the message's `BatchEncoding`.

    Raises `InvalidEventBatch`, naming what was wrong, for an encoding other than
    `MSGPACK_ROWS_V1`, for bytes that are not such a batch and for a value that cannot be.
    """
    if encoding != MSGPACK_ROWS_V1:
        raise InvalidEventBatch(
            f"unknown batch encoding {int(encoding)} (this fluvial reads {MSGPACK_ROWS_V1}, "
            "BATCH_ENCODING_MSGPACK_ROWS_V1)"
        )
    if not data:
        # An unset bytes field: a batch with no events is an empty array (0x90), never nothing.
        raise InvalidEventBatch("not an event batch: no bytes (an empty batch is 0x90)")
    try:
        rows = _decode_rows(data)
    except msgspec.ValidationError as exc:
        raise InvalidEventBatch(_describe(data, str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidEventBatch(f"not an event batch: not msgpack ({exc})") from None
    # One loop, no call per row: this runs for every event a consumer receives.
    records: list[EventRecord] = []
    append = records.append
    for index, row in enumerate(rows):
        persistence_id, entity_type = row.persistence_id, row.entity_type
        head, separator, entity_id = persistence_id.partition("|")
        if head != entity_type or not (separator and entity_type and entity_id):
            raise _not_of_its_entity_type(index, row)
        payload, replication = row.payload, row.replication
        append(
            EventRecord(
                persistence_id,
                row.seq_nr,
                entity_type,
                row.slice,
                None
                if payload is None
                else SerializedPayload(payload.manifest, payload.version, payload.data),
                frozenset(tags) if (tags := row.tags) else _NO_TAGS,
                row.timestamp,
                row.write_timestamp,
                None if replication is None else _replication(index, row, replication),
            )
        )
    return records


def _not_of_its_entity_type(index: int, row: _WireRow) -> InvalidEventBatch:
    return InvalidEventBatch(
        f"event batch row {index} ({row.persistence_id!r} seq nr {row.seq_nr}): entity type "
        f"{row.entity_type!r} does not begin persistence id {row.persistence_id!r} "
        "(entity_type|entity_id)"
    )


def _replication(index: int, row: _WireRow, wire: _WireReplication) -> ReplicationMetadata:
    where = f"event batch row {index} ({row.persistence_id!r} seq nr {row.seq_nr})"
    try:
        ReplicatedPersistenceId.parse(row.persistence_id)
        return ReplicationMetadata(
            wire.origin_replica, wire.origin_seq_nr, VersionVector(wire.version_vector)
        )
    except InvalidPersistenceId as exc:
        raise InvalidEventBatch(
            f"{where}: has replication metadata, but its persistence id is not a replicated "
            f"entity's (entity_type|entity_id|replica_id): {exc}"
        ) from None
    except InvalidReplicationMetadata as exc:
        raise InvalidEventBatch(f"{where}: replication: {exc}") from None


def _describe(data: bytes, error: str) -> str:
    """msgspec's validation `error` ("Expected `int` >= 1 - at `$[3][1]`") in the batch's
    terms: which row, which event, which field, and the value found there. The batch is decoded
    again without types for the event and the value, only on this error path."""
    match = _PATH.search(error)
    problem = error[: match.start()] if match else error
    indexes = [int(i) for i in re.findall(r"\d+", match.group(1))] if match else []
    if not indexes:
        return f"not an event batch: {problem} (a batch is an array of rows)"
    try:
        untyped: Any = _decode_any(data)
        row, value = untyped[indexes[0]], untyped
        for index in indexes:
            value = value[index]
    except (msgspec.DecodeError, LookupError, TypeError):  # malformed after the bad value
        row, value = None, _UNKNOWN
    where = f"event batch row {indexes[0]}{_event_of(row)}"
    if len(indexes) == 1:
        fields = ", ".join(_FIELDS)
        return f"{where}: {problem} (a row is an array of {len(_FIELDS)} fields: {fields})"
    found = "" if ", got " in problem or value is _UNKNOWN else f", got {value!r}"
    return f"{where}, {_field_name(indexes[1:])}: {problem}{found}"


def _field_name(indexes: list[int]) -> str:
    name = _FIELDS[indexes[0]] if indexes[0] < len(_FIELDS) else f"element {indexes[0]}"
    inner = {"payload": _PAYLOAD_FIELDS, "replication": _REPLICATION_FIELDS}.get(name)
    if inner is None or len(indexes) == 1:
        return name + "".join(f"[{i}]" for i in indexes[1:])  # a tag's index
    if indexes[1] >= len(inner):
        return f"{name} element {indexes[1]}"
    # Below: a version vector's entry, then its replica (0) or counter (1).
    return f"{name}.{inner[indexes[1]]}" + "".join(f"[{i}]" for i in indexes[2:])


def _event_of(row: Any) -> str:
    """ " (persistence id, seq nr n)" of an undecodable row, if it has them."""
    if isinstance(row, list) and len(row) > 1:
        persistence_id, seq_nr = row[0], row[1]
        if isinstance(persistence_id, str) and isinstance(seq_nr, int):
            return f" ({persistence_id!r} seq nr {seq_nr})"
    return ""
