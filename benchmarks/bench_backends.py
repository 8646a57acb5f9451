"""SQLite and PostgreSQL side by side in one run, each beside its raw driver writing or reading
the same rows, with ratios, in one table:

(a) journal appends/s of one entity's events, 1 event per append, one after the other, against
    the raw driver inserting the same rows one per transaction;
(b) commands/s of 1,000 entities at once (the shopping cart, one event a command), against the
    raw driver writing the same rows in batches (SQLite: one executemany transaction;
    PostgreSQL: COPY, 1,000 rows per transaction);
(c) events/s of an exactly-once projection (a read-model upsert per event, the offsets saved
    in the same transaction) catching up on prefilled events, against the raw driver reading
    the same pages, decoding them and upserting the same rows, one transaction per page.

The PostgreSQL baselines of (a) and (b) are measured twice: psycopg alone, and from trio
through the journal's bridge (each transaction one `trio.to_thread.run_sync` call, as the
journal's pool runs it). The workloads are those of bench_entities.py, bench_projection.py and
bench_postgres_journal.py (imported, not copied). Medians of `--rounds` rounds, with the
lowest and highest; the load average is printed before and after.

Needs PostgreSQL at 127.0.0.1:5432 (or FLUVIAL_PG_DSN) with a database `test`.
Run: .venv/bin/python benchmarks/bench_backends.py [--rounds 3] [--events 20000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from statistics import median

import trio
from _table import print_table
from bench_entities import raw_sqlite
from bench_postgres_journal import (
    ENTITIES,
    ROUNDS,
    concurrent_rows,
    connect_raw,
    copy_rows,
    entity_commands,
    insert_one,
    open_bench_journal,
    raw_rows_per_second,
    raw_rows_per_second_from_trio,
    reset_schema,
    sequential_appends,
    sequential_rows,
)
from bench_projection import prefill, projection_throughput, raw_throughput

from fluvial.core.serialization import SerializerRegistry
from fluvial.examples.shopping_cart import register_cart
from fluvial.journal.sqlite._database import connect
from fluvial.journal.sqlite._journal import open_sqlite_journal

Figures = dict[str, float]  # one round's figures by name

# The table: (measure, journal, fluvial's figure, its baseline, the baseline's shape, target).
_ROWS = [
    (
        "(a) journal append, 1 entity, appends/s",
        "SQLite",
        "sqlite appends",
        "sqlite appends raw",
        "sqlite3, 1 row per txn",
        ">= 0.5x raw",
    ),
    (
        "",
        "PostgreSQL",
        "pg appends",
        "pg appends raw",
        "psycopg alone, 1 row per txn",
        ">= 0.5x raw",
    ),
    ("", "", "pg appends", "pg appends raw from trio", "psycopg from trio, the same", ""),
    (
        f"(b) {ENTITIES:,} entities at once, commands/s",
        "SQLite",
        "sqlite commands",
        "sqlite commands raw",
        f"sqlite3 executemany, {ENTITIES * ROUNDS:,} rows, 1 txn",
        "20,000",
    ),
    (
        "",
        "PostgreSQL",
        "pg commands",
        "pg commands raw",
        f"psycopg alone, COPY {ENTITIES:,} rows per txn",
        "10,000",
    ),
    ("", "", "pg commands", "pg commands raw from trio", "psycopg from trio, the same", ""),
    (
        "(c) exactly-once projection, events/s",
        "SQLite",
        "sqlite projection",
        "sqlite projection raw",
        "sqlite3: page, decode, upsert, 1 txn a page",
        "50,000",
    ),
    (
        "",
        "PostgreSQL",
        "pg projection",
        "pg projection raw",
        "psycopg: the same",
        "",
    ),
]


async def _sqlite_round(directory: Path, events: int) -> Figures:
    registry = register_cart(SerializerRegistry())
    async with open_sqlite_journal(directory / "appends.db") as journal:
        appends = await sequential_appends(journal, "sqlite")
        _, commands = await entity_commands(journal, "sqlite")
    projected = directory / "projection.db"
    async with open_sqlite_journal(projected) as journal:
        prefilled = await prefill(journal, registry, events)
    conn = connect(str(projected), "process")
    try:
        raw_projection = raw_throughput(conn, registry, "?")
    finally:
        conn.close()
    async with open_sqlite_journal(projected) as journal:
        projection = await projection_throughput(journal, registry, prefilled, "?")
    raw_one, raw_batched = raw_sqlite(directory / "raw.db", "process", ENTITIES * ROUNDS)
    return {
        "sqlite appends": appends,
        "sqlite appends raw": raw_one,
        "sqlite commands": commands,
        "sqlite commands raw": raw_batched,
        "sqlite projection": projection,
        "sqlite projection raw": raw_projection,
    }


async def _postgres_round(events: int) -> Figures:
    registry = register_cart(SerializerRegistry())
    reset_schema()
    async with open_bench_journal() as journal:  # also makes the schema the raw driver writes
        appends = await sequential_appends(journal, "pg")
        _, commands = await entity_commands(journal, "pg")
    figures = {
        "pg appends": appends,
        "pg appends raw": raw_rows_per_second(insert_one, sequential_rows("raw")),
        "pg appends raw from trio": await raw_rows_per_second_from_trio(
            insert_one, sequential_rows("raw-trio")
        ),
        "pg commands": commands,
        "pg commands raw": raw_rows_per_second(copy_rows, concurrent_rows("copy")),
        "pg commands raw from trio": await raw_rows_per_second_from_trio(
            copy_rows, concurrent_rows("copy-trio")
        ),
    }
    reset_schema()  # the projection reads every cart's events: only its own here
    async with open_bench_journal() as journal:
        prefilled = await prefill(journal, registry, events)
        with connect_raw() as conn:
            figures["pg projection raw"] = raw_throughput(conn, registry, "%s")
        figures["pg projection"] = await projection_throughput(journal, registry, prefilled, "%s")
    reset_schema()
    return figures


def _table(rounds: list[Figures]) -> list[list[object]]:
    """Per row: fluvial's median and range (on the journal's first row), the baseline's
    median, and the ratio of the medians."""
    table: list[list[object]] = []
    for measure, journal, key, baseline_key, shape, target in _ROWS:
        values = [r[key] for r in rounds]
        value = median(values)
        baseline = median(r[baseline_key] for r in rounds)
        table.append(
            [
                measure,
                journal,
                value if journal else "",
                f"{min(values):,.0f}-{max(values):,.0f}" if journal else "",
                baseline,
                shape,
                f"{value / baseline:.2f}",
                target,
            ]
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="report the median of rounds")
    parser.add_argument("--events", type=int, default=20_000, help="prefilled for (c)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rounds: list[Figures] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            figures = trio.run(_sqlite_round, Path(tmp), args.events)
        figures.update(trio.run(_postgres_round, args.events))
        rounds.append(figures)
    load_after = os.getloadavg()
    print_table(
        f"SQLite and PostgreSQL in one run (median of {args.rounds} rounds; raw: the same "
        "rows by the driver alone, in the same run; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after)",
        ["measure", "journal", "fluvial", "range", "raw", "raw shape", "ratio", "target"],
        _table(rounds),
    )


if __name__ == "__main__":
    main()
