"""The PostgreSQL journal against the raw driver (psycopg, sync) writing the same rows into the
same table, and the entity runtime on PostgreSQL beside the same on a SQLite file, in one run.

1. Journal appends, 1 event each: one entity, one append after the other (a commit's latency),
   against raw psycopg inserting one row per transaction (an autocommit INSERT: one round
   trip); 1,000 entities appending at once (the group commit), against raw psycopg writing
   the same rows 1,000 per transaction with executemany (pipeline mode) and with COPY.
2. Entity commands/s (the shopping cart, one event per command): 1 entity sequential and
   1,000 entities at once, on PostgreSQL and on SQLite, each with its raw driver's figure for
   the same rows (one per transaction; 1,000 per transaction).

Needs PostgreSQL at 127.0.0.1:5432 (or FLUVIAL_PG_DSN) with a database `test`.
Run: .venv/bin/python benchmarks/bench_postgres_journal.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any, Protocol

import psycopg
import trio
from _table import print_table
from bench_entities import _raw as sqlite_raw
from psycopg import sql

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.entity import Entities, open_entities
from fluvial.examples.shopping_cart import AddItem, ShoppingCart, register_cart
from fluvial.journal.api import Journal, SnapshotStore
from fluvial.journal.postgres import open_postgres_journal
from fluvial.journal.sqlite._journal import open_sqlite_journal

DSN = os.environ.get("FLUVIAL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = f"bench_journal_{os.getpid()}"  # its own: other runs may share the server
SEQUENTIAL = 1_000
ENTITIES = 1_000
ROUNDS = 5  # appends (or commands) per entity in the concurrent shapes
COLUMNS = "persistence_id, seq_nr, entity_type, slice, db_timestamp, manifest, ser_version, payload"
RAW_INSERT = (
    f"INSERT INTO event_journal ({COLUMNS}) VALUES (%s, %s, %s, %s, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint, %s, %s, %s)"
)
RAW_COPY = f"COPY event_journal ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ["text", "int8", "text", "int4", "int8", "text", "int4", "bytea"]


class JournalUnderBench(Journal, SnapshotStore, Protocol):
    """What the entity runtime is given."""


def _event(entity: int, seq_nr: int, run: str) -> EventRecord:
    pid = PersistenceId("Cart", f"{run}-{entity}")
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type="Cart",
        slice=pid.slice,
        payload=SerializedPayload("cart.ItemAdded", 1, b"x" * 40),
    )


def _row(record: EventRecord) -> tuple[Any, ...]:
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


def _connect() -> psycopg.Connection[Any]:
    return psycopg.connect(DSN, autocommit=True, options=f"-c search_path={SCHEMA}")


def _raw_one_per_transaction(records: list[EventRecord]) -> float:
    with _connect() as conn:
        started = time.perf_counter()
        for record in records:
            conn.execute(RAW_INSERT, _row(record))  # autocommit: its own transaction
        return len(records) / (time.perf_counter() - started)


def _raw_executemany(transactions: list[list[EventRecord]]) -> float:
    with _connect() as conn:
        started = time.perf_counter()
        for records in transactions:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(RAW_INSERT, [_row(r) for r in records])
        return sum(map(len, transactions)) / (time.perf_counter() - started)


def _raw_copy(transactions: list[list[EventRecord]]) -> float:
    timestamp = time.time_ns() // 1000
    with _connect() as conn:
        started = time.perf_counter()
        for records in transactions:
            with conn.transaction(), conn.cursor() as cursor, cursor.copy(RAW_COPY) as copy:
                copy.set_types(COPY_TYPES)
                for r in records:
                    row = _row(r)
                    timestamp += 1
                    copy.write_row((*row[:4], timestamp, *row[4:]))
        return sum(map(len, transactions)) / (time.perf_counter() - started)


def _concurrent_rows(run: str) -> list[list[EventRecord]]:
    return [[_event(n, s, run) for n in range(ENTITIES)] for s in range(1, ROUNDS + 1)]


async def _journal_appends(run: str) -> tuple[float, float]:
    async with open_postgres_journal(DSN, schema=SCHEMA) as journal:
        records = [_event(0, n + 1, f"{run}-seq") for n in range(SEQUENTIAL)]
        started = time.perf_counter()
        for record in records:
            await journal.append([record])
        sequential = SEQUENTIAL / (time.perf_counter() - started)

        rows = _concurrent_rows(f"{run}-conc")  # made before the clock starts, as for raw

        async def entity(n: int) -> None:
            for seq_nr in range(ROUNDS):
                await journal.append([rows[seq_nr][n]])

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(ENTITIES):
                nursery.start_soon(entity, n)
        return sequential, ENTITIES * ROUNDS / (time.perf_counter() - started)


async def _sequential_commands(entities: Entities, run: str, commands: int) -> float:
    cart = entities.ref(ShoppingCart, f"{run}-sequential")
    started = time.perf_counter()
    for _ in range(commands):
        await cart.ask(AddItem("apple", 1))
    return commands / (time.perf_counter() - started)


async def _concurrent_commands(entities: Entities, run: str) -> float:
    """Every entity is live (recovered) before the clock starts: this measures commands."""

    async def shop(index: int, count: int) -> None:
        cart = entities.ref(ShoppingCart, f"{run}-cart-{index}")
        for _ in range(count):
            await cart.ask(AddItem("apple", 1))

    for count in (1, ROUNDS):
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(ENTITIES):
                nursery.start_soon(shop, index, count)
    return ROUNDS * ENTITIES / (time.perf_counter() - started)


async def _entity_commands(journal: JournalUnderBench, run: str) -> tuple[float, float]:
    registry = register_cart(SerializerRegistry())
    async with open_entities(journal, registry, [ShoppingCart], snapshots=journal) as entities:
        await _sequential_commands(entities, f"{run}-warm", 100)
        return (
            await _sequential_commands(entities, run, SEQUENTIAL),
            await _concurrent_commands(entities, run),
        )


async def _postgres_commands(run: str) -> tuple[float, float]:
    async with open_postgres_journal(DSN, schema=SCHEMA) as journal:
        return await _entity_commands(journal, run)


async def _sqlite_commands(path: Path, run: str) -> tuple[float, float]:
    async with open_sqlite_journal(path) as journal:
        return await _entity_commands(journal, run)


def _reset_schema() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="report the median of rounds")
    args = parser.parse_args()
    _reset_schema()
    appends: list[tuple[float, float]] = []
    raw_one: list[float] = []
    raw_many: list[float] = []
    raw_copy: list[float] = []
    pg_commands: list[tuple[float, float]] = []
    sqlite_commands: list[tuple[float, float]] = []
    sqlite_baselines: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            appends.append(trio.run(_journal_appends, f"journal{n}"))  # also makes the schema
            raw_one.append(
                _raw_one_per_transaction([_event(0, s + 1, f"raw{n}") for s in range(SEQUENTIAL)])
            )
            raw_many.append(_raw_executemany(_concurrent_rows(f"many{n}")))
            raw_copy.append(_raw_copy(_concurrent_rows(f"copy{n}")))
            pg_commands.append(trio.run(_postgres_commands, f"entities{n}"))
            sqlite_commands.append(
                trio.run(_sqlite_commands, Path(tmp) / f"fluvial{n}.db", f"entities{n}")
            )
            sqlite_baselines.append(
                sqlite_raw(Path(tmp) / f"raw{n}.db", "process", ENTITIES * ROUNDS)
            )
    _reset_schema()

    sequential, concurrent = (median(a[i] for a in appends) for i in (0, 1))
    one, many, copy = median(raw_one), median(raw_many), median(raw_copy)
    print_table(
        f"journal appends/s, 1 event each (median of {args.rounds} rounds; raw: psycopg "
        "alone, the same rows and table, same run)",
        ["shape", "PostgresJournal", "raw psycopg", "raw shape", "ratio"],
        [
            [
                "1 entity, sequential",
                sequential,
                one,
                "1 row per transaction",
                _ratio(sequential, one),
            ],
            [
                f"{ENTITIES:,} entities at once",
                concurrent,
                many,
                f"executemany, {ENTITIES:,} rows per txn",
                _ratio(concurrent, many),
            ],
            ["", "", copy, f"COPY, {ENTITIES:,} rows per txn", _ratio(concurrent, copy)],
        ],
    )
    pg_seq, pg_conc = (median(c[i] for c in pg_commands) for i in (0, 1))
    sq_seq, sq_conc = (median(c[i] for c in sqlite_commands) for i in (0, 1))
    sq_one, sq_batched = (median(b[i] for b in sqlite_baselines) for i in (0, 1))
    print_table(
        f"entity commands/s, 1 event each (median of {args.rounds} rounds; PostgreSQL and a "
        "SQLite file, durability=process, in the same run)",
        ["workload", "journal", "commands/s", "raw driver/s", "raw shape", "ratio"],
        [
            [
                "1 entity, sequential",
                "PostgreSQL",
                pg_seq,
                one,
                "1 row per txn",
                _ratio(pg_seq, one),
            ],
            ["", "SQLite", sq_seq, sq_one, "1 row per txn", _ratio(sq_seq, sq_one)],
            [
                f"{ENTITIES:,} entities at once",
                "PostgreSQL",
                pg_conc,
                copy,
                f"COPY, {ENTITIES:,} rows per txn",
                _ratio(pg_conc, copy),
            ],
            [
                "",
                "SQLite",
                sq_conc,
                sq_batched,
                f"executemany, {ENTITIES * ROUNDS:,} rows, 1 txn",
                _ratio(sq_conc, sq_batched),
            ],
        ],
    )


if __name__ == "__main__":
    main()
