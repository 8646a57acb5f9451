"""The PostgreSQL journal against the raw driver (psycopg, sync) writing the same rows into the
same table, and the entity runtime on PostgreSQL beside the same on a SQLite file, in one run.

1. Journal appends, 1 event each: one entity, one append after the other (a commit's latency),
   against raw psycopg inserting one row per transaction (an autocommit INSERT: one round
   trip); 1,000 entities appending at once (the group commit), against raw psycopg writing
   the same rows 1,000 per transaction with executemany (pipeline mode) and with COPY.
2. Entity commands/s (the shopping cart, one event per command): 1 entity sequential and
   1,000 entities at once, on PostgreSQL and on SQLite, each with its raw driver's figure for
   the same rows (one per transaction; 1,000 per transaction).

`--group-commit WxM` opens the PostgreSQL journal with W writer transactions of at most M
appends each (`open_postgres_journal(writers=W, max_appends_per_transaction=M)`; default: the
journal's defaults).

Needs PostgreSQL at 127.0.0.1:5432 (or FLUVIAL_PG_DSN) with a database `test`.
Run: .venv/bin/python benchmarks/bench_postgres_journal.py [--rounds 3] [--group-commit 4x250]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from statistics import median
from typing import Any, Protocol

import psycopg
import trio
from _table import print_table
from bench_entities import concurrent_commands, raw_sqlite, sequential_commands
from psycopg import sql

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.entity import open_entities
from fluvial.examples.shopping_cart import ShoppingCart, register_cart
from fluvial.journal.api import Journal, SnapshotStore
from fluvial.journal.postgres import PostgresJournal, open_postgres_journal
from fluvial.journal.postgres._journal import MAX_APPENDS_PER_TRANSACTION, WRITERS
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
Connection = psycopg.Connection[Any]
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


def connect_raw() -> Connection:
    """psycopg alone on this run's schema, autocommit."""
    return psycopg.connect(DSN, autocommit=True, options=f"-c search_path={SCHEMA}")


RawWrite = Callable[[Connection, list[EventRecord]], None]


def insert_one(conn: Connection, records: list[EventRecord]) -> None:
    """One row, one autocommit INSERT: its own transaction, one round trip."""
    (record,) = records
    conn.execute(RAW_INSERT, _row(record))


def insert_many(conn: Connection, records: list[EventRecord]) -> None:
    """The rows in one transaction, one executemany (pipeline mode)."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(RAW_INSERT, [_row(r) for r in records])


_copy_timestamps = itertools.count(time.time_ns() // 1000)  # increasing, as the journal's


def copy_rows(conn: Connection, records: list[EventRecord]) -> None:
    """The rows in one transaction, one binary COPY."""
    with conn.transaction(), conn.cursor() as cursor, cursor.copy(RAW_COPY) as copy:
        copy.set_types(COPY_TYPES)
        for r in records:
            row = _row(r)
            copy.write_row((*row[:4], next(_copy_timestamps), *row[4:]))


def raw_rows_per_second(write: RawWrite, transactions: list[list[EventRecord]]) -> float:
    """Rows/s of psycopg alone running `write` once per transaction's records."""
    with connect_raw() as conn:
        started = time.perf_counter()
        for records in transactions:
            write(conn, records)
        return sum(map(len, transactions)) / (time.perf_counter() - started)


async def raw_rows_per_second_from_trio(
    write: RawWrite, transactions: list[list[EventRecord]]
) -> float:
    """The same from trio through the journal's bridge: each transaction one worker-thread
    call (`trio.to_thread.run_sync`), as the journal's pool runs one."""
    with await trio.to_thread.run_sync(connect_raw) as conn:
        started = time.perf_counter()
        for records in transactions:
            await trio.to_thread.run_sync(write, conn, records)
        return sum(map(len, transactions)) / (time.perf_counter() - started)


def sequential_rows(run: str) -> list[list[EventRecord]]:
    """One entity's `SEQUENTIAL` events, one per transaction."""
    return [[_event(0, s + 1, run)] for s in range(SEQUENTIAL)]


def concurrent_rows(run: str) -> list[list[EventRecord]]:
    return [[_event(n, s, run) for n in range(ENTITIES)] for s in range(1, ROUNDS + 1)]


def group_commit(setting: str) -> dict[str, int]:
    """`open_postgres_journal`'s keyword arguments for a "WxM" `--group-commit` setting."""
    writers, _, appends = setting.partition("x")
    try:
        return {"writers": int(writers), "max_appends_per_transaction": int(appends)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"not WxM (such as 4x250): {setting!r}") from None


def open_bench_journal(**options: Any) -> AbstractAsyncContextManager[PostgresJournal]:
    """The PostgreSQL journal in this run's schema, with `open_postgres_journal`'s `options`."""
    return open_postgres_journal(DSN, schema=SCHEMA, **options)


async def sequential_appends(journal: Journal, run: str) -> float:
    """Appends/s of one entity, 1 event each, one after the other."""
    transactions = sequential_rows(f"{run}-seq")
    started = time.perf_counter()
    for records in transactions:
        await journal.append(records)
    return SEQUENTIAL / (time.perf_counter() - started)


async def concurrent_appends(journal: Journal, run: str) -> float:
    """Appends/s of `ENTITIES` entities appending at once, `ROUNDS` appends of 1 event each."""
    rows = concurrent_rows(f"{run}-conc")  # made before the clock starts, as for raw

    async def entity(n: int) -> None:
        for seq_nr in range(ROUNDS):
            await journal.append([rows[seq_nr][n]])

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n in range(ENTITIES):
            nursery.start_soon(entity, n)
    return ENTITIES * ROUNDS / (time.perf_counter() - started)


async def _journal_appends(run: str, options: dict[str, int]) -> tuple[float, float]:
    async with open_bench_journal(**options) as journal:
        return await sequential_appends(journal, run), await concurrent_appends(journal, run)


async def entity_commands(journal: JournalUnderBench, run: str) -> tuple[float, float]:
    """Commands/s of one cart sequential, and of `ENTITIES` carts at once (`ROUNDS` each)."""
    registry = register_cart(SerializerRegistry())
    async with open_entities(journal, registry, [ShoppingCart], snapshots=journal) as entities:
        await sequential_commands(entities, 100, f"{run}-warm")
        return (
            await sequential_commands(entities, SEQUENTIAL, f"{run}-sequential"),
            await concurrent_commands(entities, ENTITIES, ENTITIES * ROUNDS, f"{run}-cart"),
        )


async def _postgres_commands(run: str, options: dict[str, int]) -> tuple[float, float]:
    async with open_bench_journal(**options) as journal:
        return await entity_commands(journal, run)


async def _sqlite_commands(path: Path, run: str) -> tuple[float, float]:
    async with open_sqlite_journal(path) as journal:
        return await entity_commands(journal, run)


def reset_schema() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="report the median of rounds")
    parser.add_argument(
        "--group-commit",
        type=group_commit,
        default={},
        metavar="WxM",
        help="W writer transactions of at most M appends (default: the journal's)",
    )
    args = parser.parse_args()
    reset_schema()
    appends: list[tuple[float, float]] = []
    raw_one: list[float] = []
    raw_many: list[float] = []
    raw_copies: list[float] = []
    pg_commands: list[tuple[float, float]] = []
    sqlite_commands: list[tuple[float, float]] = []
    sqlite_baselines: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            # The journal's appends first: opening it makes the schema.
            appends.append(trio.run(_journal_appends, f"journal{n}", args.group_commit))
            raw_one.append(raw_rows_per_second(insert_one, sequential_rows(f"raw{n}")))
            raw_many.append(raw_rows_per_second(insert_many, concurrent_rows(f"many{n}")))
            raw_copies.append(raw_rows_per_second(copy_rows, concurrent_rows(f"copy{n}")))
            pg_commands.append(trio.run(_postgres_commands, f"entities{n}", args.group_commit))
            sqlite_commands.append(
                trio.run(_sqlite_commands, Path(tmp) / f"fluvial{n}.db", f"entities{n}")
            )
            sqlite_baselines.append(
                raw_sqlite(Path(tmp) / f"raw{n}.db", "process", ENTITIES * ROUNDS)
            )
    reset_schema()

    setting = {"writers": WRITERS, "max_appends_per_transaction": MAX_APPENDS_PER_TRANSACTION}
    setting.update(args.group_commit)
    group = f"group commit {setting['writers']}x{setting['max_appends_per_transaction']}"
    sequential, concurrent = (median(a[i] for a in appends) for i in (0, 1))
    one, many, copy = median(raw_one), median(raw_many), median(raw_copies)
    print_table(
        f"journal appends/s, 1 event each ({group}; median of {args.rounds} rounds; raw: "
        "psycopg alone, the same rows and table, same run)",
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
        f"entity commands/s, 1 event each (PostgreSQL {group}; median of {args.rounds} rounds; "
        "PostgreSQL and a SQLite file, durability=process, in the same run)",
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
