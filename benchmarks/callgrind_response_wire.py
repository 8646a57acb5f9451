"""Instructions per message of a stream's batch response, by hand (`_response_wire`) or by
betterproto2, for comparing the two under callgrind.

A live-path batch holds one event or a few: each costs its message's encoding at the producer
and its parsing at the consumer, whatever its size. This encodes (`encode`, `bp2-encode`) or
parses (`parse`, `bp2-parse`) ROUNDS times one `StreamEventsResponse` of a LIVE batch of one
200-byte row; the difference between ROUNDS and 0 rounds, divided by ROUNDS, is what one
message costs that way::

    export PYTHONHASHSEED=0
    for n in 2000 0; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python benchmarks/callgrind_response_wire.py parse $n 2>&1 | grep Collected
    done
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.grpc._response_wire import batch_response, parse_batch_response

BATCH = pb.EventBatch(pb.EventPath.LIVE, pb.BatchEncoding.MSGPACK_ROWS_V1, bytes(range(200)))
DATA = bytes(pb.StreamEventsResponse(batch=BATCH))

WAYS: dict[str, Callable[[], object]] = {
    "encode": lambda: batch_response(BATCH),
    "bp2-encode": lambda: bytes(pb.StreamEventsResponse(batch=BATCH)),
    "parse": lambda: parse_batch_response(DATA),
    "bp2-parse": lambda: pb.StreamEventsResponse.parse(DATA),
}


def main(way: str, rounds: int) -> None:
    run = WAYS[way]
    for _ in range(rounds):
        run()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
