"""The event batch encoding: what a consumer decodes is what the producer encoded, a longer row
of a later version still decodes, and bytes that are not a batch raise `InvalidEventBatch`
naming the row, the event and the field."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluvial.core.errors import DataError
from fluvial.core.records import MAX_SEQ_NR, MAX_TIMESTAMP, EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.core.serialization import SerializedPayload
from fluvial.grpc._batch_codec import InvalidEventBatch, decode_events, encode_events

_name = st.text(min_size=1, max_size=12).filter(lambda s: "|" not in s)
_id = st.text(min_size=1, max_size=20)
_timestamp = st.integers(0, MAX_TIMESTAMP)
_payload = (
    st.builds(SerializedPayload, _name, st.integers(1, 2**31), st.binary(max_size=200)) | st.none()
)
_version_vector = st.dictionaries(_name, st.integers(0, 2**63), max_size=4).map(VersionVector.of)


@st.composite
def _record(draw: st.DrawFn) -> EventRecord:
    entity_type = draw(_name)
    entity_id = draw(_id)
    replication: ReplicationMetadata | None = None
    if draw(st.booleans()):  # a replicated entity's event: type|id|replica
        replica = draw(_name)
        persistence_id = f"{entity_type}|{entity_id}|{replica}"
        replication = ReplicationMetadata(
            draw(_name), draw(st.integers(1, MAX_SEQ_NR)), draw(_version_vector)
        )
    else:
        persistence_id = f"{entity_type}|{entity_id}"
    return EventRecord(
        persistence_id,
        draw(st.integers(1, MAX_SEQ_NR)),
        entity_type,
        draw(st.integers(0, 1023)),
        draw(_payload),
        draw(st.frozensets(st.text(max_size=10), max_size=4)),
        draw(_timestamp),
        draw(_timestamp),
        replication,
    )


@settings(max_examples=50, deadline=None)  # the machine is shared: no per-example deadline
@given(st.lists(_record(), max_size=20))
def test_decode_gives_back_the_encoded_records(records: list[EventRecord]) -> None:
    assert decode_events(encode_events(records)) == records


def _row(**changes: Any) -> list[Any]:
    """A valid row of events.proto's layout, built by hand (not by the encoder), with changes."""
    fields: dict[str, Any] = {
        "persistence_id": "Cart|a",
        "seq_nr": 7,
        "entity_type": "Cart",
        "slice": 677,
        "payload": ["cart-item-added", 1, b"\x81\xa4item\xa5apple"],
        "tags": ["t:fruit/apple", "cart"],
        "timestamp": 1_700_000_000_000_001,
        "write_timestamp": 1_700_000_000_000_000,
        "replication": None,
    }
    fields.update(changes)
    return list(fields.values())


def _batch(*rows: Any) -> bytes:
    return msgspec.msgpack.encode(list(rows))


def test_the_layout_is_the_one_events_proto_documents() -> None:
    [record] = decode_events(_batch(_row()))
    assert record == EventRecord(
        "Cart|a",
        7,
        "Cart",
        677,
        SerializedPayload("cart-item-added", 1, b"\x81\xa4item\xa5apple"),
        frozenset({"t:fruit/apple", "cart"}),
        1_700_000_000_000_001,
        1_700_000_000_000_000,
    )
    replicated = _row(persistence_id="Cart|a|B", replication=["A", 3, [["A", 3], ["B", 1]]])
    [record] = decode_events(_batch(replicated))
    assert record.replication == ReplicationMetadata("A", 3, VersionVector.of({"A": 3, "B": 1}))
    assert decode_events(_batch(_row(payload=None, tags=[])))[0].payload is None
    assert decode_events(_batch()) == []


def test_a_longer_row_of_a_later_version_decodes_with_its_extra_elements_ignored() -> None:
    [record] = decode_events(_batch([*_row(), "a later field", {"and": "another"}]))
    assert record == decode_events(_batch(_row()))[0]


_NOT_BATCHES = [
    (b"", "not an event batch: no bytes"),
    (b"\xc1", "not an event batch: not msgpack"),
    (_batch(_row()) + b"\x00", "not an event batch: not msgpack"),
    (msgspec.msgpack.encode({"events": []}), "not an event batch: Expected `array`"),
    (_batch(_row(), 5), "event batch row 1: Expected `array`, got `int`"),
    (_batch(_row()[:8]), "event batch row 0 ('Cart|a' seq nr 7): Expected `array` of at"),
    (_batch(_row(seq_nr=0)), "row 0 ('Cart|a' seq nr 0), seq_nr: Expected `int` >= 1, got 0"),
    (_batch(_row(seq_nr=2**63)), f"seq_nr: Expected `int` <= {MAX_SEQ_NR}"),
    (_batch(_row(slice=1024)), "slice: Expected `int` <= 1023, got 1024"),
    (_batch(_row(slice=-1)), "slice: Expected `int` >= 0, got -1"),
    (_batch(_row(timestamp=-5)), "timestamp: Expected `int` >= 0, got -5"),
    (_batch(_row(write_timestamp="now")), "write_timestamp: Expected `int`, got `str`"),
    (_batch(_row(persistence_id=b"Cart|a")), "persistence_id: Expected `str`, got `bytes`"),
    (_batch(_row(tags=["a", 3])), "tags[1]: Expected `str`, got `int`"),
    (_batch(_row(payload=["m", 0, b""])), "payload.version: Expected `int` >= 1, got 0"),
    (_batch(_row(payload=["m", 1, "text"])), "payload.data: Expected `bytes`, got `str`"),
    (_batch(_row(payload=["m", 1])), "payload: Expected `array` of at least length 3"),
    (_batch(_row(entity_type="Order")), "entity type 'Order' does not begin persistence id"),
    (_batch(_row(persistence_id="Cart")), "entity type 'Cart' does not begin persistence id"),
    (_batch(_row(persistence_id="Cart|")), "entity type 'Cart' does not begin persistence id"),
    (
        _batch(_row(replication=["B", 1, []])),
        "('Cart|a' seq nr 7): has replication metadata, but its persistence id is not a "
        "replicated entity's",
    ),
    (
        _batch(_row(persistence_id="Cart|a|B", replication=["B", 0, []])),
        "replication.origin_seq_nr: Expected `int` >= 1, got 0",
    ),
    (
        _batch(_row(persistence_id="Cart|a|B", replication=["B", 1, [["B", 0]]])),
        "replication.version_vector[0][1]: Expected `int` >= 1, got 0",
    ),
    (
        _batch(_row(persistence_id="Cart|a|B", replication=["B", 1, [["B", 1], ["A", 1]]])),
        "replication: version vector replicas must be sorted and distinct",
    ),
    (
        _batch(_row(persistence_id="Cart|a|B", replication=["B|C", 1, []])),
        "replication: replica id must be non-empty and contain no '|'",
    ),
]


@pytest.mark.parametrize(("data", "message"), _NOT_BATCHES, ids=[m for _, m in _NOT_BATCHES])
def test_bytes_that_are_not_a_valid_batch_raise_invalid_event_batch_naming_what(
    data: bytes, message: str
) -> None:
    with pytest.raises(InvalidEventBatch) as raised:
        decode_events(data)
    assert message in str(raised.value)
    assert isinstance(raised.value, DataError)
    assert raised.value.__cause__ is None  # no msgspec error chained: the message says it


def test_an_encoding_other_than_msgpack_rows_v1_is_refused_by_number() -> None:
    with pytest.raises(InvalidEventBatch, match="unknown batch encoding 0"):
        decode_events(_batch(_row()), encoding=0)


@pytest.mark.parametrize(
    "record",
    [
        EventRecord("Cart|a", 2**64, "Cart", 1, None),
        EventRecord("Cart|\ud800", 1, "Cart", 1, None),  # a lone surrogate is not UTF-8
    ],
)
def test_a_record_the_encoding_cannot_hold_raises_invalid_event_batch(record: EventRecord) -> None:
    with pytest.raises(InvalidEventBatch, match="cannot encode an event batch"):
        encode_events([record])


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=40,
)


def _decodes_or_refuses(data: bytes) -> None:
    try:
        records = decode_events(data)
    except InvalidEventBatch as exc:
        assert str(exc)
    else:
        assert all(isinstance(record, EventRecord) for record in records)


@settings(max_examples=75, deadline=None)
@given(st.binary(max_size=200) | _msgpack_values.map(msgspec.msgpack.encode))
def test_any_bytes_decode_to_records_or_raise_invalid_event_batch(data: bytes) -> None:
    _decodes_or_refuses(data)


@settings(max_examples=75, deadline=None)
@given(st.lists(_record(), min_size=1, max_size=5), st.data())
def test_a_valid_batch_with_a_byte_changed_decodes_or_raises_invalid_event_batch(
    records: list[EventRecord], data: st.DataObject
) -> None:
    encoded = bytearray(encode_events(records))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    _decodes_or_refuses(bytes(encoded))
