"""PostgreSQL drivers from trio: asyncpg under trio-asyncio against psycopg 3 (sync, in trio
worker threads), each beside its own raw figure (the driver alone, no trio) in the same run.

The rows are the journal's (persistence id, seq nr, entity type, slice, timestamps, tags,
manifest, payload) into a table keyed by (persistence_id, seq_nr), in three shapes:
- batch: 1,000 entities x 1 event per transaction (a group commit), executemany or COPY;
- sequential: 1 entity, 1 event per transaction, one after the other (the latency of a commit);
- concurrent: 8 connections, each 1 event per transaction (appends of many entities at once).

Needs PostgreSQL at 127.0.0.1:5432 (or FLUVIAL_PG_DSN) with a database `test`.
Run: .venv/bin/python benchmarks/bench_postgres_drivers.py
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import psycopg
import trio
import trio_asyncio
from _table import print_table

DSN = os.environ.get("FLUVIAL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BATCHES = 20
BATCH = 1_000
SEQUENTIAL = 1_000
CONNECTIONS = 8
CONCURRENT = 4_000  # transactions in all, over the CONNECTIONS

COLUMNS = [
    "persistence_id",
    "seq_nr",
    "entity_type",
    "slice",
    "write_timestamp",
    "tags",
    "manifest",
    "ser_version",
    "payload",
]
TABLE = "bench_drivers.event_journal"
SETUP = f"""
DROP SCHEMA IF EXISTS bench_drivers CASCADE;
CREATE SCHEMA bench_drivers;
CREATE TABLE {TABLE} (
    persistence_id text NOT NULL,
    seq_nr bigint NOT NULL,
    entity_type text NOT NULL,
    slice integer NOT NULL,
    db_timestamp bigint NOT NULL
        DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    write_timestamp bigint,
    tags text[],
    manifest text,
    ser_version integer,
    payload bytea,
    PRIMARY KEY (persistence_id, seq_nr)
);
CREATE INDEX ON {TABLE} (entity_type, slice, db_timestamp);
"""
_placeholders = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
INSERT_ASYNCPG = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({_placeholders})"
INSERT_PSYCOPG = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * 9)})"
COPY_PSYCOPG = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

Row = tuple[str, int, str, int, int, list[str] | None, str, int, bytes]


def _row(entity: int, seq_nr: int, run: int) -> Row:
    pid = f"Cart|run{run}-cart-{entity}"
    tags = ["cart"] if entity % 4 == 0 else None
    return (pid, seq_nr, "Cart", entity % 1024, 0, tags, "cart.ItemAdded", 1, b"x" * 40)


def _batches(run: int) -> list[list[Row]]:
    return [[_row(e, b + 1, run) for e in range(BATCH)] for b in range(BATCHES)]


def _sequential(run: int) -> list[Row]:
    return [_row(0, n + 1, run) for n in range(SEQUENTIAL)]


def _per_worker(run: int) -> list[list[Row]]:
    each = CONCURRENT // CONNECTIONS
    return [[_row(w, n + 1, run) for n in range(each)] for w in range(CONNECTIONS)]


def _reset() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")


# psycopg: the sync functions a worker thread runs (and the raw figure runs directly).


def _psycopg_executemany(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(INSERT_PSYCOPG, rows)  # pipeline mode inside executemany


def _psycopg_copy(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_PSYCOPG) as copy:
        copy.set_types(["text", "int8", "text", "int4", "int8", "text[]", "text", "int4", "bytea"])
        for row in rows:
            copy.write_row(row)


def _psycopg_one(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    with conn.transaction():
        conn.execute(INSERT_PSYCOPG, rows[0])


# asyncpg: the coroutines, run by asyncio.run (raw) or through trio-asyncio.


async def _asyncpg_executemany(conn: asyncpg.Connection, rows: Sequence[Row]) -> None:
    async with conn.transaction():
        await conn.executemany(INSERT_ASYNCPG, rows)


async def _asyncpg_copy(conn: asyncpg.Connection, rows: Sequence[Row]) -> None:
    async with conn.transaction():
        await conn.copy_records_to_table(
            "event_journal", schema_name="bench_drivers", columns=COLUMNS, records=rows
        )


async def _asyncpg_one(conn: asyncpg.Connection, rows: Sequence[Row]) -> None:
    async with conn.transaction():
        await conn.execute(INSERT_ASYNCPG, *rows[0])


def _psycopg_connect() -> psycopg.Connection[Any]:
    return psycopg.connect(DSN)


async def _asyncpg_connect() -> asyncpg.Connection:
    return await asyncpg.connect(DSN)


def _rate(rows: int, started: float) -> float:
    return rows / (time.perf_counter() - started)


class Measure:
    """One scenario's transactions: `batches` per connection, each a list of rows."""

    def __init__(self, name: str, make: Callable[[int], list[list[list[Row]]]]) -> None:
        self.name = name
        self.make = make
        self.run = 0

    def work(self) -> list[list[list[Row]]]:
        _reset()
        self.run += 1
        return self.make(self.run)


def psycopg_raw(measure: Measure, write: Callable[[psycopg.Connection[Any], Any], None]) -> float:
    work = measure.work()
    conns = [_psycopg_connect() for _ in work]
    started = time.perf_counter()

    def worker(conn: psycopg.Connection[Any], transactions: list[list[Row]]) -> None:
        for rows in transactions:
            write(conn, rows)

    # Plain threads, one per connection: the best a caller of the sync driver gets.
    with ThreadPoolExecutor(len(work)) as pool:
        list(pool.map(worker, conns, work))
    rate = _rate(sum(len(r) for t in work for r in t), started)
    for conn in conns:
        conn.close()
    return rate


def psycopg_trio(measure: Measure, write: Callable[[psycopg.Connection[Any], Any], None]) -> float:
    work = measure.work()

    async def main() -> float:
        conns = [await trio.to_thread.run_sync(_psycopg_connect) for _ in work]
        started = time.perf_counter()

        async def worker(conn: psycopg.Connection[Any], transactions: list[list[Row]]) -> None:
            for rows in transactions:
                await trio.to_thread.run_sync(write, conn, rows)

        async with trio.open_nursery() as nursery:
            for conn, transactions in zip(conns, work, strict=True):
                nursery.start_soon(worker, conn, transactions)
        rate = _rate(sum(len(r) for t in work for r in t), started)
        for conn in conns:
            conn.close()
        return rate

    return trio.run(main)


AsyncpgWrite = Callable[[asyncpg.Connection, Any], Awaitable[None]]


async def _asyncpg_workers(work: list[list[list[Row]]], write: AsyncpgWrite) -> float:
    conns = [await _asyncpg_connect() for _ in work]
    started = time.perf_counter()

    async def worker(conn: asyncpg.Connection, transactions: list[list[Row]]) -> None:
        for rows in transactions:
            await write(conn, rows)

    await asyncio.gather(*(worker(c, t) for c, t in zip(conns, work, strict=True)))
    rate = _rate(sum(len(r) for t in work for r in t), started)
    for conn in conns:
        await conn.close()
    return rate


def asyncpg_raw(measure: Measure, write: AsyncpgWrite) -> float:
    return asyncio.run(_asyncpg_workers(measure.work(), write))


def asyncpg_trio(measure: Measure, write: AsyncpgWrite) -> float:
    work = measure.work()

    async def main() -> float:
        async with trio_asyncio.open_loop():
            conns = [await trio_asyncio.aio_as_trio(_asyncpg_connect)() for _ in work]
            started = time.perf_counter()

            async def worker(conn: asyncpg.Connection, transactions: list[list[Row]]) -> None:
                # Each transaction is one call from trio, as the journal would make it.
                for rows in transactions:
                    await trio_asyncio.aio_as_trio(write)(conn, rows)

            async with trio.open_nursery() as nursery:
                for conn, transactions in zip(conns, work, strict=True):
                    nursery.start_soon(worker, conn, transactions)
            rate = _rate(sum(len(r) for t in work for r in t), started)
            for conn in conns:
                await trio_asyncio.aio_as_trio(conn.close)()
            return rate

    return trio.run(main)


def main() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(SETUP)
    batch = Measure("1,000 entities x 1 event per txn", lambda run: [_batches(run)])
    sequential = Measure("1 entity, 1 event per txn", lambda run: [[[r] for r in _sequential(run)]])
    concurrent = Measure(
        f"{CONNECTIONS} connections, 1 event per txn",
        lambda run: [[[r] for r in rows] for rows in _per_worker(run)],
    )
    rows: list[list[object]] = []
    for measure, psycopg_ways, asyncpg_ways in [
        (
            batch,
            [("executemany", _psycopg_executemany), ("COPY", _psycopg_copy)],
            [("executemany", _asyncpg_executemany), ("COPY", _asyncpg_copy)],
        ),
        (sequential, [("execute", _psycopg_one)], [("execute", _asyncpg_one)]),
        (concurrent, [("execute", _psycopg_one)], [("execute", _asyncpg_one)]),
    ]:
        for way, p_write in psycopg_ways:
            raw, via_trio = psycopg_raw(measure, p_write), psycopg_trio(measure, p_write)
            rows.append([measure.name, f"psycopg {way}", via_trio, raw, f"{via_trio / raw:.2f}"])
        for way, a_write in asyncpg_ways:
            raw, via_trio = asyncpg_raw(measure, a_write), asyncpg_trio(measure, a_write)
            rows.append([measure.name, f"asyncpg {way}", via_trio, raw, f"{via_trio / raw:.2f}"])
    print_table(
        "rows/s into the journal's table shape (raw: the driver alone, same run)",
        ["shape", "driver", "from trio", "raw driver", "ratio"],
        rows,
    )
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP SCHEMA bench_drivers CASCADE")


if __name__ == "__main__":
    main()
