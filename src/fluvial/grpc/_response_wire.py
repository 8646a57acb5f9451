"""`StreamEventsResponse`'s most frequent kinds in protobuf's wire format, by hand.

betterproto2 encodes and parses a message in a pure-Python loop over its fields (a `BytesIO`,
a dataclass per field read, a `warnings.catch_warnings()` per default compared), which cost a
followed event more than its own encoding does. The stream's hot messages are simple: an
`EventBatch` (two enums, one bytes field, a `ReplayPart` on the REPLAY path), a `Heartbeat`,
a `QueryProgress`. This module writes and reads those directly, byte for byte what
betterproto2 writes (tests/grpc/test_response_wire.py holds it to that):

- `batch_response`, `progress_response` and `HEARTBEAT` are the producer's, as `Encoded`
  values: a message's bytes, ready for the codec (`ProducerCodec` passes them on unchanged
  when the call's reply type is theirs, and the size limit around it checks them as any);
- `ConsumerCodec` is the consumer's: it reads a `StreamEventsResponse` of the batch kind
  itself and hands every other message to betterproto2.

What the parser reads itself is the shape fluvial's producer writes: one field 2 (the batch)
and nothing else at the top level, and in the batch, fields 1..4 each at most once, in
increasing order, of their wire types, with known enum values and lengths inside the bytes.
Anything else (another kind, an unknown field, a field repeated, which protobuf says the last
of wins or merges, garbage) goes to betterproto2, so that it reads, and refuses, exactly what
it read and refused before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

from grpclib.encoding.base import CodecBase

from ._proto.fluvial import v1 as pb

_M = TypeVar("_M")

_VARINT_1: Final = tuple(bytes((n,)) for n in range(128))
_UINT64: Final = (1 << 64) - 1


class Encoded(Generic[_M]):
    """The bytes of a `message_type` message, encoded already."""

    __slots__ = ("data", "message_type")

    def __init__(self, message_type: type[_M], data: bytes) -> None:
        self.message_type = message_type
        self.data = data

    def __repr__(self) -> str:
        return f"Encoded({self.message_type.__name__}, {len(self.data)} bytes)"


EncodedResponse = Encoded[pb.StreamEventsResponse]


def _varint(value: int) -> bytes:
    # betterproto2's: a negative value as its 64-bit two's complement (10 bytes).
    if 0 <= value < 128:
        return _VARINT_1[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _replay_part(part: pb.ReplayPart) -> bytes:
    fields: list[bytes] = []
    if part.correlation_id:
        fields += (b"\x08", _varint(part.correlation_id))
    if part.persistence_id:
        pid = part.persistence_id.encode()
        fields += (b"\x12", _varint(len(pid)), pid)
    if part.complete:
        fields.append(b"\x18\x01")
    return b"".join(fields)


def batch_response(batch: pb.EventBatch) -> EncodedResponse:
    """`StreamEventsResponse(batch=batch)`, encoded (proto3: fields at their default are
    left out; a replay part is there when set, even empty)."""
    fields: list[bytes] = []
    if batch.path:
        fields += (b"\x08", _varint(batch.path))
    if batch.encoding:
        fields += (b"\x10", _varint(batch.encoding))
    events = batch.events
    if events:
        fields += (b"\x1a", _varint(len(events)), events)
    if batch.replay is not None:
        part = _replay_part(batch.replay)
        fields += (b"\x22", _varint(len(part)), part)
    size = sum(map(len, fields))
    return Encoded(pb.StreamEventsResponse, b"".join((b"\x12", _varint(size), *fields)))


def progress_response(timestamp: int, seen: Mapping[str, int]) -> EncodedResponse:
    """`StreamEventsResponse(query_progress=QueryProgress(timestamp, seen))`, encoded (each
    entry of the map with its key and value, as betterproto2 writes them, in `seen`'s order)."""
    fields = [b"\x08", _varint(timestamp)] if timestamp else []
    for persistence_id, seq_nr in seen.items():
        key = persistence_id.encode()
        entry = b"".join((b"\x0a", _varint(len(key)), key, b"\x10", _varint(seq_nr)))
        fields += (b"\x12", _varint(len(entry)), entry)
    body = b"".join(fields)
    return Encoded(pb.StreamEventsResponse, b"".join((b":", _varint(len(body)), body)))


HEARTBEAT: Final[EncodedResponse] = Encoded(
    pb.StreamEventsResponse, bytes(pb.StreamEventsResponse(heartbeat=pb.Heartbeat()))
)

_PATHS: Final = {int(p): p for p in pb.EventPath}
_ENCODINGS: Final = {int(e): e for e in pb.BatchEncoding}


class _Other(Exception):
    """Bytes of another shape than the one `parse_batch_response` reads."""


def _read_varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    """The varint at `position` (at most 10 bytes, as betterproto2 reads), and the position
    after it."""
    value, shift = 0, 0
    while position < end and shift < 70:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise _Other


def _read_length(data: bytes, position: int, end: int) -> tuple[int, int]:
    """A length-delimited field's start after its length at `position`, and its end."""
    length, start = _read_varint(data, position, end)
    if start + length > end:
        raise _Other
    return start, start + length


def _read_replay_part(data: bytes, position: int, end: int) -> pb.ReplayPart:
    correlation_id, persistence_id, complete = 0, "", False
    if position < end and data[position] == 0x08:
        value, position = _read_varint(data, position + 1, end)
        correlation_id = value & _UINT64
    if position < end and data[position] == 0x12:
        start, position = _read_length(data, position + 1, end)
        try:
            persistence_id = data[start:position].decode()
        except UnicodeDecodeError:
            raise _Other from None
    if position < end and data[position] == 0x18:
        value, position = _read_varint(data, position + 1, end)
        complete = value > 0
    if position != end:
        raise _Other
    return pb.ReplayPart(correlation_id, persistence_id, complete)


def parse_batch_response(data: bytes) -> pb.StreamEventsResponse | None:
    """The `StreamEventsResponse` of the batch kind in `data`, as betterproto2 parses it; None
    for bytes of any other shape (see the module docstring)."""
    try:
        if not data or data[0] != 0x12:
            return None
        position, end = _read_length(data, 1, len(data))
        if end != len(data):
            return None
        path, encoding = pb.EventPath.UNSPECIFIED, pb.BatchEncoding.UNSPECIFIED
        events, replay = b"", None
        if position < end and data[position] == 0x08:
            value, position = _read_varint(data, position + 1, end)
            path = _PATHS[value]
        if position < end and data[position] == 0x10:
            value, position = _read_varint(data, position + 1, end)
            encoding = _ENCODINGS[value]
        if position < end and data[position] == 0x1A:
            start, position = _read_length(data, position + 1, end)
            events = data[start:position]
        if position < end and data[position] == 0x22:
            start, position = _read_length(data, position + 1, end)
            replay = _read_replay_part(data, start, position)
        if position != end:
            return None
    except (_Other, KeyError):
        return None
    return pb.StreamEventsResponse(batch=pb.EventBatch(path, encoding, events, replay))


def encode_message(message: Any, message_type: Any) -> bytes:
    """The bytes a codec sends for `message`: an `Encoded` of `message_type` as they are, a
    betterproto2 message of that type encoded; TypeError for anything else."""
    if isinstance(message, Encoded) and message.message_type is message_type:
        return message.data
    if not isinstance(message, message_type):
        raise TypeError(f"a {message_type.__name__} was expected, not {message!r}")
    return bytes(message)


class ConsumerCodec(CodecBase):
    """protobuf for betterproto2 messages, with a received `StreamEventsResponse` of the
    batch kind read by `parse_batch_response`."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return encode_message(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is pb.StreamEventsResponse:
            response = parse_batch_response(bytes(data))
            if response is not None:
                return response
        return message_type.FromString(data)
