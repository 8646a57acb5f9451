"""Instructions per followed event on the live path, for comparing two versions under callgrind.

Wall-clock latency on this project's 2-core machine depends on what else runs; instruction
counts do not. This runs a producer (`serve_producer` over a SQLite journal) and a consumer
(`open_grpc_consumer`, an exactly-once projection into its own SQLite file) in one process, on
loopback, and appends EVENTS events one at a time, each only once the consumer's handler has
seen the one before: every event is committed, published, sent, received and handled on its
own, as on the live path at a low rate (no batching). The difference between two runs,
divided by the difference of their EVENTS, is what one followed event costs on both sides
together (every thread)::

    export PYTHONHASHSEED=0   # dict layouts otherwise move counts by about ±1%
    for n in 300 100; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python benchmarks/callgrind_live_path.py $n 2>&1 | grep Collected
    done

The timers of the stream (heartbeats, the producer's batch delay, its query's follow delay,
its progress delay) run on the wall clock, which valgrind slows by ~50x: the counts include
what they cost at that pace, the same for both versions compared. At that pace the query's
`follow_delay` (0.05 s) and the `progress_delay` (0.1 s) pass every event or two, where at
1,000 events/s they gather 50 and 100 events; `--delays SECONDS` sets both (to 60: the
query's reads and the progress messages of a long run, spread over many events, drop out of
the count, as they nearly do at full speed).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

import attrs
import trio

from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import slice_for
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc import (
    ConsumerSettings,
    EventProducerSource,
    ProducerSettings,
    ProducerStreamSettings,
    open_grpc_consumer,
    serve_producer,
)
from fluvial.journal.sqlite import open_sqlite_journal
from fluvial.projection import ExactlyOnce, Projection, serve_projection
from fluvial.projection._source_settings import SourceSettings


@attrs.frozen
class Tick:
    n: int


REGISTRY = SerializerRegistry()
REGISTRY.register(Tick, "bench.Tick")


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE model (pid TEXT, seq_nr INTEGER, n INTEGER)")


async def main(events: int, delays: float | None) -> None:
    handled = 0
    wake = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def handle(conn: sqlite3.Connection, envelope: EventEnvelope[Tick]) -> None:
        nonlocal handled
        handled += 1
        token.run_sync_soon(lambda: wake.set())  # the event main waits on by then
        conn.execute(
            "INSERT INTO model VALUES (?, ?, ?)",
            (envelope.persistence_id, envelope.seq_nr, envelope.event.n),
        )

    source: EventProducerSource[Tick, Tick] = EventProducerSource(
        stream_id="ticks", entity_type="Tick", serializers=REGISTRY
    )
    projection = Projection[Tick, sqlite3.Connection](
        "ticks", "ticks", ExactlyOnce(handle, migrations=(_create,))
    )
    settings = ConsumerSettings(first_sight=FirstSight.QUERY_IN_COMMIT_ORDER)
    producer = ProducerSettings()
    if delays is not None:
        stream = ProducerStreamSettings(
            progress_delay=delays, source=SourceSettings(follow_delay=delays)
        )
        producer = ProducerSettings(stream=stream)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            open_sqlite_journal(Path(tmp) / "producer.db") as journal,
            open_sqlite_journal(Path(tmp) / "consumer.db") as local,
            trio.open_nursery() as nursery,
        ):
            port = await nursery.start(
                lambda task_status: serve_producer(
                    journal,
                    [source],
                    serializers=REGISTRY,
                    settings=producer,
                    task_status=task_status,
                )
            )
            async with open_grpc_consumer("127.0.0.1", port, settings=settings) as consumer:
                await nursery.start(
                    lambda task_status: serve_projection(
                        consumer,
                        REGISTRY,
                        projection,
                        offsets=local.offset_store(),
                        task_status=task_status,
                    )
                )
                for n in range(1, events + 1):
                    pid = f"Tick|e{n % 10}"
                    seq_nr = (n + 9) // 10
                    record = EventRecord(
                        pid, seq_nr, "Tick", slice_for(pid), REGISTRY.encode(Tick(n))
                    )
                    await journal.append([record])
                    while handled < n:
                        wake = trio.Event()
                        await wake.wait()
                nursery.cancel_scope.cancel()  # the projection, before its channel closes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("events", type=int)
    parser.add_argument("--delays", type=float, help="follow_delay and progress_delay, seconds")
    args = parser.parse_args()
    trio.run(main, args.events, args.delays)
