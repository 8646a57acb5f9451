"""The gRPC consumer's catch-up speed, against the same projection over the local journal.

One process: a producer's SQLite journal prefilled with EVENTS events of 100 entities, served by
`serve_producer` on loopback (events as stored: no transformation), and a grouped exactly-once
projection into a second SQLite file with its offsets, reading either through
`open_grpc_consumer` or, as the baseline measured in the same run, straight from the producer's
journal (`LocalJournalSources`: no gRPC, no encoding). Both time from `serve_projection`'s start
to the last event committed in the read model. Run: `.venv/bin/python benchmarks/bench_consumer.py`
(just bench-grpc).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from _table import print_table

from fluvial.core.ids import slice_for
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc import (
    EventProducerSource,
    ProducerSettings,
    ProducerStreamSettings,
    open_grpc_consumer,
    serve_producer,
)
from fluvial.journal.sqlite import open_sqlite_journal
from fluvial.projection import GroupedExactlyOnce, Projection, serve_projection
from fluvial.projection._source import LocalJournalSources
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import SourceProvider

EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
ENTITIES = 100
ENTITY_TYPE = "Account"


@attrs.frozen
class Added:
    amount: int


REGISTRY = SerializerRegistry()
REGISTRY.register(Added, "bench.Added")
QUIET = SourceSettings(backtracking_interval=None)


def create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE model (pid TEXT, seq_nr INTEGER, amount INTEGER)")


def handle(conn: sqlite3.Connection, envelopes: Sequence[EventEnvelope[Added]]) -> None:
    conn.executemany(
        "INSERT INTO model VALUES (?, ?, ?)",
        [(e.persistence_id, e.seq_nr, e.event.amount) for e in envelopes],
    )


def count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM model").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


async def prefill(journal: Any) -> None:
    per_entity = EVENTS // ENTITIES

    async def one(pid: str) -> None:
        for start in range(0, per_entity, 50):
            await journal.append(
                [
                    EventRecord(pid, n + 1, ENTITY_TYPE, slice_for(pid), REGISTRY.encode(Added(n)))
                    for n in range(start, min(per_entity, start + 50))
                ]
            )

    async with trio.open_nursery() as nursery:
        for index in range(ENTITIES):
            nursery.start_soon(one, f"{ENTITY_TYPE}|e{index}")


async def measure(grpc: bool) -> float:
    """Events per second of one catch-up."""
    tmp = Path(tempfile.mkdtemp())
    async with (
        open_sqlite_journal(tmp / "producer.db") as producer_journal,
        open_sqlite_journal(tmp / "consumer.db") as consumer_journal,
        trio.open_nursery() as nursery,
    ):
        await prefill(producer_journal)
        source: EventProducerSource[Added, Added] = EventProducerSource(
            stream_id="accounts", entity_type=ENTITY_TYPE, serializers=REGISTRY
        )
        settings = ProducerSettings(stream=ProducerStreamSettings(source=QUIET))
        port = await nursery.start(
            lambda task_status: serve_producer(
                producer_journal,
                [source],
                serializers=REGISTRY,
                settings=settings,
                task_status=task_status,
            )
        )

        @asynccontextmanager
        async def local() -> Any:
            yield LocalJournalSources(producer_journal)

        opened: AbstractAsyncContextManager[SourceProvider] = (
            open_grpc_consumer("127.0.0.1", port) if grpc else local()
        )
        projection = Projection(
            "bench",
            "accounts" if grpc else ENTITY_TYPE,
            GroupedExactlyOnce(handle, max_size=4000, max_wait=0.05, migrations=(create,)),
            source=QUIET,
        )
        async with opened as provider, trio.open_nursery() as projecting:
            started = time.perf_counter()
            await projecting.start(
                lambda task_status: serve_projection(
                    provider,
                    REGISTRY,
                    projection,
                    offsets=consumer_journal.offset_store(),
                    task_status=task_status,
                )
            )
            while count(tmp / "consumer.db") < EVENTS:  # noqa: ASYNC110 (another connection)
                await trio.sleep(0.01)
            elapsed = time.perf_counter() - started
            projecting.cancel_scope.cancel()  # before the channel closes under it
        nursery.cancel_scope.cancel()
    return EVENTS / elapsed


async def main() -> None:
    rows = []
    for _ in range(3):
        baseline = await measure(grpc=False)
        over_grpc = await measure(grpc=True)
        rows.append(("catch-up", EVENTS, over_grpc, baseline, over_grpc / baseline))
    print_table(
        "gRPC consumer: producer SQLite -> loopback -> grouped exactly-once SQLite handler",
        ["run", "events", "gRPC events/s", "local journal events/s (baseline)", "ratio"],
        rows,
    )


if __name__ == "__main__":
    trio.run(main)
