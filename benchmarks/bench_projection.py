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
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

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
from fluvial.journal.api import Journal
from fluvial.journal.sqlite._database import connect
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.projection._handlers import AtLeastOnce, ExactlyOnce
from fluvial.projection._runner import Projection, serve_projection
from fluvial.projection._source_settings import SourceSettings

_CARTS = 1000
_ITEM_COUNT = "CREATE TABLE IF NOT EXISTS item_count (item TEXT PRIMARY KEY, n INTEGER)"
# {p}: the driver's placeholder (sqlite3 "?", psycopg "%s").
_UPSERT = (
    "INSERT INTO item_count VALUES ({p}, {p}) "
    "ON CONFLICT (item) DO UPDATE SET n = item_count.n + excluded.n"
)
_PAGE = (
    "SELECT persistence_id, seq_nr, db_timestamp, manifest, ser_version, payload "
    "FROM event_journal WHERE entity_type = {p} AND db_timestamp > {p} "
    "ORDER BY db_timestamp LIMIT {p}"
)


class Executes(Protocol):
    """What the read model's writes need of a transaction: sqlite3's and psycopg's
    connections both have it."""

    def execute(self, query: str, params: tuple[Any, ...], /) -> Any: ...


async def prefill(journal: Journal, registry: SerializerRegistry, events: int) -> int:
    """`events` (rounded down to whole rounds) of `_CARTS` carts appending at once; how many."""
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
    return events // _CARTS * _CARTS


async def projection_throughput(
    journal: Journal, registry: SerializerRegistry, events: int, placeholder: str
) -> float:
    """Events/s of an exactly-once projection (its offsets saved in the handler's transaction)
    that upserts a read-model row per event, from the journal's first event until `events`
    were handled."""
    handled = 0
    upsert = _UPSERT.format(p=placeholder)

    def count_item(txn: Executes, envelope: EventEnvelope[CartEvent]) -> None:
        nonlocal handled
        if isinstance(envelope.event, ItemUpdated):
            txn.execute(upsert, (envelope.event.item_id, envelope.event.quantity))
        handled += 1

    def create(txn: Executes) -> None:
        txn.execute(_ITEM_COUNT, ())

    projection = Projection("bench", ENTITY_TYPE, ExactlyOnce(count_item, migrations=[create]))
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        await nursery.start(serve_projection, journal, registry, projection)
        # The handler runs in a worker thread, so it can only leave a count to poll.
        while handled < events:  # noqa: ASYNC110
            await trio.sleep(0.001)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return events / elapsed


def raw_throughput(
    conn: Executes,
    registry: SerializerRegistry,
    placeholder: str,
    page_size: int = SourceSettings().page_size,
) -> float:
    """The same read model written by the raw driver on `conn` (in autocommit mode): pages of
    the size fluvial reads, read, decoded and upserted, each page in one transaction."""
    conn.execute(_ITEM_COUNT, ())
    conn.execute("DELETE FROM item_count", ())
    page, upsert = _PAGE.format(p=placeholder), _UPSERT.format(p=placeholder)
    started = time.perf_counter()
    last, count = -1, 0
    while rows := conn.execute(page, (ENTITY_TYPE, last, page_size)).fetchall():
        conn.execute("BEGIN", ())
        for pid, seq_nr, timestamp, manifest, version, data in rows:
            payload = SerializedPayload(manifest, version, data)
            event = registry.decode(payload, persistence_id=pid, seq_nr=seq_nr)
            conn.execute(upsert, (event.item_id, event.quantity))
            last = timestamp
        conn.execute("COMMIT", ())
        count += len(rows)
    return count / (time.perf_counter() - started)


async def _sqlite_throughput(path: Path, registry: SerializerRegistry, events: int) -> float:
    async with open_sqlite_journal(path) as journal:
        return await projection_throughput(journal, registry, events, "?")


def _sqlite_raw_throughput(path: Path, registry: SerializerRegistry) -> float:
    conn = connect(str(path), "process")  # autocommit: isolation_level None
    try:
        return raw_throughput(conn, registry, "?")
    finally:
        conn.close()


async def _prefill_sqlite(path: Path, registry: SerializerRegistry, events: int) -> int:
    async with open_sqlite_journal(path) as journal:
        return await prefill(journal, registry, events)


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
        events = trio.run(_prefill_sqlite, path, registry, args.events)
        raw = _sqlite_raw_throughput(path, registry)
        fluvial = trio.run(_sqlite_throughput, path, registry, events)
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
