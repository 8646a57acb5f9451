"""How fast events go through the wire encoding: fluvial's batch codec against betterproto2
messages, in one run (the codec alone, no network: end to end over grpclib comes with the
producer).

Each way turns a batch of `EventRecord`s (100-byte payloads, two tags) into the bytes of one
protobuf message and back into records, conversions included, as producer and consumer do:

- fluvial: `encode_events` into an `EventBatch` (one bytes field, msgpack rows), serialized
  and parsed as a `StreamEventsResponse` by `_response_wire`, `decode_events` (what fluvial
  sends);
- betterproto2, one message per event: each event its own `Event` message, serialized and
  parsed (DESIGN.md's first baseline);
- betterproto2, `repeated Event`: all events as messages in one `repeated` field of one message.

The two betterproto2 `Event` messages are written here by hand in the form betterproto2
generates (they are not part of the protocol).

Run: .venv/bin/python benchmarks/bench_grpc_encoding.py   (`just bench-grpc`)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import betterproto2
from _table import print_table

from fluvial.core.ids import slice_for
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.grpc._batch_codec import MSGPACK_ROWS_V1, decode_events, encode_events
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.grpc._response_wire import batch_response, parse_batch_response

BATCH_SIZES = (100, 500)
# Each measurement runs for at least this much CPU time. CPU time, not wall time: one thread
# does all the work, and on a machine shared with other jobs its CPU time varies far less.
SECONDS = 1.0


@dataclass(eq=False, repr=False)
class PayloadMessage(betterproto2.Message):
    manifest: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    version: int = betterproto2.field(2, betterproto2.TYPE_INT32)
    data: bytes = betterproto2.field(3, betterproto2.TYPE_BYTES)


@dataclass(eq=False, repr=False)
class EventMessage(betterproto2.Message):
    persistence_id: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    seq_nr: int = betterproto2.field(2, betterproto2.TYPE_INT64)
    entity_type: str = betterproto2.field(3, betterproto2.TYPE_STRING)
    slice: int = betterproto2.field(4, betterproto2.TYPE_INT32)
    payload: PayloadMessage | None = betterproto2.field(5, betterproto2.TYPE_MESSAGE, optional=True)
    tags: list[str] = betterproto2.field(6, betterproto2.TYPE_STRING, repeated=True)
    timestamp: int = betterproto2.field(7, betterproto2.TYPE_INT64)
    write_timestamp: int = betterproto2.field(8, betterproto2.TYPE_INT64)


@dataclass(eq=False, repr=False)
class EventListMessage(betterproto2.Message):
    events: list[EventMessage] = betterproto2.field(1, betterproto2.TYPE_MESSAGE, repeated=True)


def _records(count: int) -> list[EventRecord]:
    records = []
    for i in range(count):
        persistence_id = f"ShoppingCart|cart-{i % 37}"
        records.append(
            EventRecord(
                persistence_id,
                i + 1,
                "ShoppingCart",
                slice_for(persistence_id),
                SerializedPayload("cart-item-added", 1, bytes(range(100))),
                frozenset({"t:carts/eu", "cart"}),
                1_764_640_000_000_000 + i,
                1_764_640_000_000_000 + i,
            )
        )
    return records


def _fluvial(records: Sequence[EventRecord]) -> list[EventRecord]:
    message = pb.EventBatch(
        path=pb.EventPath.QUERY,
        encoding=pb.BatchEncoding.MSGPACK_ROWS_V1,
        events=encode_events(records),
    )
    parsed = parse_batch_response(batch_response(message).data)
    assert parsed is not None and parsed.batch is not None
    return decode_events(parsed.batch.events, encoding=parsed.batch.encoding)


def _to_message(r: EventRecord) -> EventMessage:
    p = r.payload
    return EventMessage(
        r.persistence_id,
        r.seq_nr,
        r.entity_type,
        r.slice,
        None if p is None else PayloadMessage(p.manifest, p.version, p.data),
        list(r.tags),
        r.timestamp,
        r.write_timestamp,
    )


def _to_record(m: EventMessage) -> EventRecord:
    p = m.payload
    return EventRecord(
        m.persistence_id,
        m.seq_nr,
        m.entity_type,
        m.slice,
        None if p is None else SerializedPayload(p.manifest, p.version, p.data),
        frozenset(m.tags),
        m.timestamp,
        m.write_timestamp,
    )


def _message_per_event(records: Sequence[EventRecord]) -> list[EventRecord]:
    return [_to_record(EventMessage.parse(bytes(_to_message(r)))) for r in records]


def _repeated_field(records: Sequence[EventRecord]) -> list[EventRecord]:
    message = EventListMessage([_to_message(r) for r in records])
    return [_to_record(m) for m in EventListMessage.parse(bytes(message)).events]


def _events_per_second(
    way: Callable[[Sequence[EventRecord]], list[EventRecord]], records: Sequence[EventRecord]
) -> float:
    assert way(records) == records  # each way carries the events whole
    rounds, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < SECONDS:
        way(records)
        rounds += 1
    return rounds * len(records) / elapsed


def main() -> None:
    rows: list[list[object]] = []
    for size in BATCH_SIZES:
        records = _records(size)
        fluvial = _events_per_second(_fluvial, records)
        per_event = _events_per_second(_message_per_event, records)
        repeated = _events_per_second(_repeated_field, records)
        batch_bytes = len(encode_events(records))
        rows.append(
            [
                size,
                fluvial,
                per_event,
                repeated,
                f"{fluvial / per_event:.1f}",
                f"{fluvial / repeated:.1f}",
                f"{batch_bytes / size:.0f} / {len(bytes(_to_message(records[0])))}",
            ]
        )
    assert MSGPACK_ROWS_V1 == pb.BatchEncoding.MSGPACK_ROWS_V1
    print_table(
        "events per CPU second through encode + decode (records -> one message's bytes -> "
        "records), 100-byte payloads",
        [
            "batch",
            "fluvial batch codec",
            "betterproto2 message per event",
            "betterproto2 repeated Event",
            "ratio to per event",
            "ratio to repeated",
            "bytes/event (codec / message)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
