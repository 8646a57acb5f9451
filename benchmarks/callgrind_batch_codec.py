"""Instructions per event of the batch codec, for comparing two versions under callgrind.

Builds batches of 500 records as benchmarks/bench_replication.py stores them (100 entities,
a small msgspec payload, no tags), encodes them once, then encodes (`encode`) or decodes
(`decode`; `consume`: as the consumer does, `batch_of` an `EventBatch` of every slice)
ROUNDS times 20 batches; the difference between ROUNDS and 0 rounds, divided by
ROUNDS * 10,000, is what one event costs that side::

    export PYTHONHASHSEED=0
    for n in 4 0; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python benchmarks/callgrind_batch_codec.py decode $n 2>&1 | grep Collected
    done
"""

from __future__ import annotations

import sys

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.grpc._batch_codec import MSGPACK_ROWS_V1, decode_events, encode_events
from fluvial.grpc._consumer_wire import batch_of
from fluvial.grpc._proto.fluvial import v1 as pb

BATCHES, SIZE, ENTITIES = 20, 500, 100


def batches() -> list[list[EventRecord]]:
    made = []
    for batch in range(BATCHES):
        records = []
        for index in range(SIZE):
            n = batch * SIZE + index
            pid = f"Tick|e{n % ENTITIES}"
            payload = SerializedPayload("bench.Tick", 1, b"\x82\xa1n\xcd\x01\x00\xa5stamp\x00")
            records.append(
                EventRecord(
                    pid,
                    n // ENTITIES + 1,
                    "Tick",
                    slice_for(pid),
                    payload,
                    frozenset(),
                    1_700_000_000_000_000 + n,
                    1_700_000_000_000_000 + n,
                )
            )
        made.append(records)
    return made


def main(side: str, rounds: int) -> None:
    records = batches()
    encoded = [encode_events(batch) for batch in records]
    messages = [
        pb.EventBatch(path=pb.EventPath.QUERY, encoding=pb.BatchEncoding(MSGPACK_ROWS_V1), events=e)
        for e in encoded
    ]
    every_slice = SliceRange.all()
    for _ in range(rounds):
        if side == "encode":
            for batch in records:
                encode_events(batch)
        elif side == "decode":
            for data in encoded:
                decode_events(data)
        else:
            for message in messages:
                batch_of(message, every_slice)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
