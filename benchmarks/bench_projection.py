"""Projection throughput and live-path latency on a SQLite file, with raw baselines.

1. Exactly-once throughput: a journal pre-filled with events of 1,000 carts; a projection with
   an exactly-once handler that upserts a read-model row per event, from the first event to
   the last. Baseline, in the same run: raw sqlite3 reading the same rows a page at a time,
   decoding them and writing the same upserts, one transaction per page.
2. Live-path latency: AddItem commands to one cart at a steady rate; for each event, the time
   from the command's reply to the projection handler's invocation, p50 and p99 (negative:
   the handler ran before the caller had its reply).

Run: .venv/bin/python benchmarks/bench_projection.py [--events 100000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import trio
from _table import print_table

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.entity import open_entities
from fluvial.examples.shopping_cart import (
    ENTITY_TYPE,
    AddItem,
    CartEvent,
    ItemUpdated,
    ShoppingCart,
    register_cart,
)
from fluvial.journal.sqlite._database import connect
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.projection._handlers import AtLeastOnce, ExactlyOnce
from fluvial.projection._runner import Projection, serve_projection
from fluvial.projection._source_settings import SourceSettings

_CREATE = "CREATE TABLE IF NOT EXISTS item_count (item TEXT PRIMARY KEY, n INTEGER)"
_UPSERT = "INSERT INTO item_count VALUES (?, ?) ON CONFLICT (item) DO UPDATE SET n = n + excluded.n"
_CARTS = 1000


async def _prefill(path: Path, registry: SerializerRegistry, events: int) -> None:
    async with open_sqlite_journal(path) as journal:
        await journal.database.write(lambda txn: txn.connection.execute(_CREATE))
        for seq_nr in range(1, events // _CARTS + 1):
            async with trio.open_nursery() as nursery:
                for cart in range(_CARTS):
                    pid = PersistenceId(ENTITY_TYPE, f"cart-{cart}")
                    record = EventRecord(
                        persistence_id=str(pid),
                        seq_nr=seq_nr,
                        entity_type=ENTITY_TYPE,
                        slice=pid.slice,
                        payload=registry.encode(ItemUpdated(f"item-{cart % 50}", 1)),
                    )
                    nursery.start_soon(journal.append, [record])


async def _projection_throughput(path: Path, registry: SerializerRegistry, events: int) -> float:
    handled = 0

    def upsert(conn: sqlite3.Connection, envelope: EventEnvelope[CartEvent]) -> None:
        nonlocal handled
        if isinstance(envelope.event, ItemUpdated):
            conn.execute(_UPSERT, (envelope.event.item_id, envelope.event.quantity))
        handled += 1

    projection = Projection("bench", ENTITY_TYPE, ExactlyOnce(upsert))
    async with open_sqlite_journal(path) as journal, trio.open_nursery() as nursery:
        started = time.perf_counter()
        await nursery.start(serve_projection, journal, registry, projection)
        # The handler runs in the writer thread, so it can only leave a count to poll.
        while handled < events:  # noqa: ASYNC110
            await trio.sleep(0.001)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return events / elapsed


def _raw_throughput(
    path: Path, registry: SerializerRegistry, page_size: int = SourceSettings().page_size
) -> float:
    """Pages of the size fluvial reads, each handled in one transaction."""
    conn = connect(str(path), "process")
    conn.execute("DELETE FROM item_count")
    started = time.perf_counter()
    last, count = -1, 0
    while rows := conn.execute(
        "SELECT persistence_id, seq_nr, db_timestamp, manifest, ser_version, payload "
        "FROM event_journal WHERE entity_type = ? AND db_timestamp > ? "
        "ORDER BY db_timestamp LIMIT ?",
        (ENTITY_TYPE, last, page_size),
    ).fetchall():
        conn.execute("BEGIN IMMEDIATE")
        for pid, seq_nr, timestamp, manifest, version, data in rows:
            payload = SerializedPayload(manifest, version, data)
            event = registry.decode(payload, persistence_id=pid, seq_nr=seq_nr)
            conn.execute(_UPSERT, (event.item_id, event.quantity))
            last = timestamp
        conn.execute("COMMIT")
        count += len(rows)
    conn.close()
    return count / (time.perf_counter() - started)


async def _live_latency(
    path: Path, registry: SerializerRegistry, rate: float, seconds: float
) -> list[float]:
    replied: dict[int, float] = {}
    invoked: dict[int, float] = {}

    async def record(envelope: EventEnvelope[CartEvent]) -> None:
        if envelope.persistence_id.endswith("|latency"):
            invoked[envelope.seq_nr] = time.perf_counter()

    projection = Projection[CartEvent](
        "latency",
        ENTITY_TYPE,
        AtLeastOnce(record),
        source=SourceSettings(backtracking_interval=None),
    )
    async with (
        open_sqlite_journal(path) as journal,
        open_entities(journal, registry, [ShoppingCart]) as entities,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_projection, journal, registry, projection)
        cart = entities.ref(ShoppingCart, "latency")
        interval, next_at = 1 / rate, trio.current_time()
        for seq_nr in range(1, int(rate * seconds) + 1):
            await cart.ask(AddItem("x", 1))
            replied[seq_nr] = time.perf_counter()
            next_at += interval
            await trio.sleep_until(next_at)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    return [(invoked[s] - replied[s]) * 1000 for s in replied if s in invoked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    registry = register_cart(SerializerRegistry())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.db"
        trio.run(_prefill, path, registry, args.events)
        events = args.events // _CARTS * _CARTS
        raw = _raw_throughput(path, registry)
        fluvial = trio.run(_projection_throughput, path, registry, events)
        latencies = trio.run(
            _live_latency, Path(tmp) / "latency.db", registry, args.rate, args.seconds
        )
    print_table(
        f"exactly-once projection over {events:,} pre-filled events (SQLite file)",
        ["measure", "fluvial", "raw sqlite3", "ratio", "target"],
        [["events/s", fluvial, raw, f"{fluvial / raw:.2f}", "50,000"]],
    )
    cuts = statistics.quantiles(latencies, n=100)
    print_table(
        f"live path: command reply -> handler invocation, {args.rate:,.0f} commands/s, "
        f"{len(latencies):,} events",
        ["p50 ms", "p99 ms", "max ms", "target p99 ms"],
        [[f"{cuts[49]:.3f}", f"{cuts[98]:.3f}", f"{max(latencies):.3f}", "5"]],
    )


if __name__ == "__main__":
    main()
