"""The hand-written wire format of the stream's hot messages (`_response_wire`) is
betterproto2's: the producer's encoder writes the bytes betterproto2 writes for every batch,
heartbeat and query progress, and the consumer's codec reads any bytes as betterproto2 reads
them (or raises what it raises), the batches fluvial's producer writes without betterproto2.
The producer's codec sends encoded bytes only as the call's reply type, within its size limit.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluvial.grpc._errors import MessageTooLarge
from fluvial.grpc._limits import SizeLimitedCodec
from fluvial.grpc._producer_wire import ProducerCodec
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.grpc._response_wire import (
    HEARTBEAT,
    ConsumerCodec,
    Encoded,
    batch_response,
    parse_batch_response,
    progress_response,
)

# The ends of each range and 0 (a default, left out of a field, not of a map entry) often.
_INT64 = st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
_UINT64 = st.sampled_from([0, 1, 2**64 - 1]) | st.integers(0, 2**64 - 1)
# Every path and encoding there is, and values newer than this code (betterproto2 keeps them).
_PATH = st.sampled_from(list(pb.EventPath)) | _INT64.map(pb.EventPath)
_ENCODING = st.sampled_from(list(pb.BatchEncoding)) | _INT64.map(pb.BatchEncoding)
_PERSISTENCE_ID = st.text(max_size=20) | st.text(min_size=200, max_size=400)
_REPLAY = st.none() | st.builds(pb.ReplayPart, _UINT64, _PERSISTENCE_ID, st.booleans())
_BATCH = st.builds(
    pb.EventBatch, _PATH, _ENCODING, st.binary(max_size=300) | st.binary(max_size=0), _REPLAY
)
# What fluvial's producer sends: a known path and encoding.
_SENT_BATCH = st.builds(
    pb.EventBatch,
    st.sampled_from(list(pb.EventPath)),
    st.sampled_from(list(pb.BatchEncoding)),
    st.binary(max_size=300),
    _REPLAY,
)


@settings(max_examples=300, deadline=None)  # the machine is shared: no per-example deadline
@given(_BATCH)
def test_a_batch_is_encoded_as_betterproto2_encodes_it(batch: pb.EventBatch) -> None:
    encoded = batch_response(batch)
    assert encoded.message_type is pb.StreamEventsResponse
    assert encoded.data == bytes(pb.StreamEventsResponse(batch=batch))


@settings(max_examples=200, deadline=None)
@given(_INT64, st.dictionaries(_PERSISTENCE_ID, _INT64, max_size=5))
def test_a_query_progress_is_encoded_as_betterproto2_encodes_it(
    timestamp: int, seen: dict[str, int]
) -> None:
    encoded = progress_response(timestamp, seen)
    progress = pb.QueryProgress(timestamp=timestamp, seen=seen)
    assert encoded.data == bytes(pb.StreamEventsResponse(query_progress=progress))


def test_a_heartbeat_is_an_empty_field_5() -> None:
    assert HEARTBEAT.data == b"\x2a\x00" == bytes(pb.StreamEventsResponse(heartbeat=pb.Heartbeat()))


def _same(ours: Any, theirs: Any) -> None:
    # repr shows the enums' classes and tells None from an empty replay part, as == does not
    # for everything.
    assert ours == theirs
    assert repr(ours) == repr(theirs)


@settings(max_examples=300, deadline=None)
@given(_SENT_BATCH)
def test_the_consumer_reads_the_producers_batches_itself_as_betterproto2_does(
    batch: pb.EventBatch,
) -> None:
    data = batch_response(batch).data
    parsed = parse_batch_response(data)
    assert parsed is not None, "the common shape is read without betterproto2"
    _same(parsed, pb.StreamEventsResponse.parse(data))
    assert parsed.batch == batch


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes((value,)))


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    if wire_type == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire_type) + payload


@st.composite
def _unknown_field(draw: st.DrawFn, known: int) -> bytes:
    """A field of a number above `known` with a value of its wire type."""
    number = draw(st.integers(known + 1, 2**29 - 1))
    wire_type = draw(st.sampled_from([0, 1, 2, 5]))
    payload = {
        0: _varint(draw(_UINT64)),
        1: draw(st.binary(min_size=8, max_size=8)),
        2: draw(st.binary(max_size=20)),
        5: draw(st.binary(min_size=4, max_size=4)),
    }[wire_type]
    return _field(number, wire_type, payload)


def _fields(message: Any, *names: str) -> list[bytes]:
    """`message`'s fields `names` as betterproto2 encodes them, one by one (those at their
    default are no bytes)."""
    return [p for name in names if (p := bytes(type(message)(**{name: getattr(message, name)})))]


@st.composite
def _valid_encoding(draw: st.DrawFn) -> bytes:
    """A `StreamEventsResponse` of the batch kind in any valid encoding: betterproto2's
    fields in any order, some twice, with unknown fields among them, and now and then a
    field of another kind next to the batch."""
    batch = draw(_BATCH)
    parts = _fields(batch, "path", "encoding", "events")
    if batch.replay is not None:
        replay = _fields(batch.replay, "correlation_id", "persistence_id", "complete")
        replay += draw(st.lists(_unknown_field(3), max_size=2))
        parts.append(_field(4, 2, b"".join(draw(st.permutations(replay)))))
    parts += draw(st.lists(st.sampled_from(parts), max_size=2)) if parts else []
    parts += draw(st.lists(_unknown_field(4), max_size=2))
    top = [_field(2, 2, b"".join(draw(st.permutations(parts))))]
    top += draw(st.lists(st.just(_field(5, 2, b"")) | _unknown_field(15), max_size=2))
    return b"".join(draw(st.permutations(top)))


def _decoded_or_error(decode: Any, data: bytes) -> Any:
    try:
        return decode(data)
    except Exception as error:  # betterproto2 raises what its readers raise
        return (type(error), str(error))


def _consumer_reads_as_betterproto2(data: bytes) -> None:
    ours = _decoded_or_error(lambda d: ConsumerCodec().decode(d, pb.StreamEventsResponse), data)
    theirs = _decoded_or_error(pb.StreamEventsResponse.parse, data)
    _same(ours, theirs)


@settings(max_examples=500, deadline=None)
@given(_valid_encoding())
def test_the_consumer_reads_any_valid_encoding_as_betterproto2_does(data: bytes) -> None:
    _consumer_reads_as_betterproto2(data)


@settings(max_examples=500, deadline=None)
@given(_SENT_BATCH, st.randoms(use_true_random=False), st.integers(1, 3))
def test_the_consumer_reads_a_damaged_batch_as_betterproto2_does(
    batch: pb.EventBatch, rng: random.Random, damages: int
) -> None:
    """Bytes near the common shape (a byte changed, dropped or added, the message cut): the
    same message or the same error."""
    data = bytearray(batch_response(batch).data)
    for _ in range(damages):
        at = rng.randrange(len(data) + 1)
        match rng.randrange(4):
            case 0 if at < len(data):
                data[at] = rng.randrange(256)
            case 1 if at < len(data):
                del data[at]
            case 2:
                data.insert(at, rng.randrange(256))
            case _:
                del data[at:]
    _consumer_reads_as_betterproto2(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_the_consumer_reads_garbage_as_betterproto2_does(data: bytes) -> None:
    _consumer_reads_as_betterproto2(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x12\x00",
        b"\x12\x02\x08\x02\x2a\x00",  # then a heartbeat: both kinds set, as betterproto2 reads
        b"\x12\x02\x08\x02\x12\x02\x08\x03",  # the batch twice: protobuf merges them
        b"\x12\x04\x08\x02\x08\x03",  # the path twice: the last one wins
        b"\x12\x04\x10\x01\x08\x02",  # fields out of order
        b"\x12\x03\x1a\x05ab",  # events past the batch's end
        b"\x12\x04\x22\x02\x12\x02",  # a persistence id past the replay part's end
        b"\x12\x05\x22\x03\x12\x01\xff",  # a persistence id that is not UTF-8
        b"\x12\x0b\x08" + b"\xff" * 10,  # a varint cut at the end
        b"\x12\x0e\x22\x0c\x08" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x12\x0b\x08" + b"\xff" * 9 + b"\x01",  # a 10-byte one
        b"\x12\x02\x0b\x00",  # a group (wire type 3)
        b"\x12\x0d\x22\x0b\x08" + b"\xff" * 9 + b"\x7f",  # a correlation id over 64 bits
    ],
)
def test_the_consumer_reads_odd_shapes_as_betterproto2_does(data: bytes) -> None:
    _consumer_reads_as_betterproto2(data)


def test_the_consumer_reads_other_messages_with_betterproto2() -> None:
    ack = pb.StreamEventsResponse(filter_update_ack=pb.FilterUpdateAck(7))
    assert ConsumerCodec().decode(bytes(ack), pb.StreamEventsResponse) == ack
    reply = pb.ReplayResponse(batch=pb.EventBatch(path=pb.EventPath.REPLAY, events=b"\x90"))
    assert ConsumerCodec().decode(bytes(reply), pb.ReplayResponse) == reply


def test_the_producer_sends_encoded_bytes_as_the_calls_reply_type_only() -> None:
    codec = ProducerCodec()
    assert codec.encode(HEARTBEAT, pb.StreamEventsResponse) == b"\x2a\x00"
    with pytest.raises(TypeError):
        codec.encode(HEARTBEAT, pb.ReplayResponse)
    with pytest.raises(TypeError):
        codec.encode(b"\x2a\x00", pb.StreamEventsResponse)


def test_encoded_bytes_over_the_send_limit_are_refused() -> None:
    codec = SizeLimitedCodec(ProducerCodec(), max_send=100)
    batch = batch_response(pb.EventBatch(pb.EventPath.LIVE, events=bytes(97)))
    with pytest.raises(MessageTooLarge):
        codec.encode(batch, pb.StreamEventsResponse)
    small = batch_response(pb.EventBatch(pb.EventPath.LIVE, events=bytes(20)))
    assert codec.encode(small, pb.StreamEventsResponse) == small.data
    assert isinstance(small, Encoded)
