"""PostgresJournal.append against the raw driver (psycopg, sync) writing the same rows into the
same table, in one run: where the journal stands against its baseline.

- sequential: 1 entity, 1 event per append, one after the other (a commit's latency);
- concurrent: 1,000 entities, 1 event each per append, all at once, on `POOL` connections
  (raw: `POOL` threads, each its share of the rows, 1 row per transaction).

Needs PostgreSQL at 127.0.0.1:5432 (or FLUVIAL_PG_DSN) with a database `test`.
Run: .venv/bin/python benchmarks/bench_postgres_journal.py
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import trio
from _table import print_table
from psycopg import sql

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.postgres import open_postgres_journal

DSN = os.environ.get("FLUVIAL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_journal"
POOL = 8
SEQUENTIAL = 1_000
ENTITIES = 1_000
ROUNDS = 3  # appends per entity in the concurrent shape
RAW_INSERT = (
    "INSERT INTO event_journal (persistence_id, seq_nr, entity_type, slice, db_timestamp, "
    "manifest, ser_version, payload) VALUES (%s, %s, %s, %s, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint, %s, %s, %s)"
)


def _event(entity: int, seq_nr: int, run: str) -> EventRecord:
    pid = PersistenceId("Cart", f"{run}-{entity}")
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type="Cart",
        slice=pid.slice,
        payload=SerializedPayload("cart.ItemAdded", 1, b"x" * 40),
    )


def _raw_row(record: EventRecord) -> tuple[Any, ...]:
    assert record.payload is not None
    payload = record.payload
    return (
        record.persistence_id,
        record.seq_nr,
        record.entity_type,
        record.slice,
        payload.manifest,
        payload.version,
        payload.data,
    )


def _raw(transactions: list[list[EventRecord]], threads: int) -> float:
    conns = [
        psycopg.connect(DSN, autocommit=True, options=f"-c search_path={SCHEMA}")
        for _ in range(threads)
    ]
    shares = [transactions[i::threads] for i in range(threads)]

    def worker(conn: psycopg.Connection[Any], share: list[list[EventRecord]]) -> None:
        for records in share:
            with conn.transaction():
                conn.execute(RAW_INSERT, _raw_row(records[0]))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, conns, shares))
    rate = len(transactions) / (time.perf_counter() - started)
    for conn in conns:
        conn.close()
    return rate


async def _journal_sequential() -> float:
    async with open_postgres_journal(DSN, schema=SCHEMA, pool_size=POOL) as journal:
        records = [_event(0, n + 1, "journal-seq") for n in range(SEQUENTIAL)]
        started = time.perf_counter()
        for record in records:
            await journal.append([record])
        return SEQUENTIAL / (time.perf_counter() - started)


async def _journal_concurrent() -> float:
    async with open_postgres_journal(DSN, schema=SCHEMA, pool_size=POOL) as journal:

        async def entity(n: int) -> None:
            for seq_nr in range(1, ROUNDS + 1):
                await journal.append([_event(n, seq_nr, "journal-conc")])

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(ENTITIES):
                nursery.start_soon(entity, n)
        return ENTITIES * ROUNDS / (time.perf_counter() - started)


def main() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    sequential = trio.run(_journal_sequential)  # also creates the schema
    raw_sequential = _raw([[_event(0, n + 1, "raw-seq")] for n in range(SEQUENTIAL)], 1)
    concurrent = trio.run(_journal_concurrent)
    raw_concurrent = _raw(
        [[_event(n, s, "raw-conc")] for s in range(1, ROUNDS + 1) for n in range(ENTITIES)], POOL
    )
    print_table(
        "appends/s, 1 event each (raw: psycopg alone, the same rows and table, same run)",
        ["shape", "PostgresJournal", "raw psycopg", "ratio"],
        [
            [
                "1 entity, sequential",
                sequential,
                raw_sequential,
                f"{sequential / raw_sequential:.2f}",
            ],
            [
                f"{ENTITIES:,} entities at once, {POOL} connections",
                concurrent,
                raw_concurrent,
                f"{concurrent / raw_concurrent:.2f}",
            ],
        ],
    )
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))


if __name__ == "__main__":
    main()
