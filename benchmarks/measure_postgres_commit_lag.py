"""How late PostgreSQL commits are behind the timestamps their rows took: the measurement
behind the journal's choice of `clock_timestamp()` and the projections' read delays
(docs/postgres.md, "Concurrent writers").

Writer threads (psycopg, one connection each) insert rows stamped with both candidates,
`clock_timestamp()` (when the row is inserted) and `transaction_timestamp()` (when its
transaction began), in two shapes: one statement per transaction (an append today), and ten
statements per transaction (a transaction that does more after it began: several batches, a
lock and a read first). A reader polls every few milliseconds and notes, for each row, how
long after each stamp it first saw it: a query reading `d` behind the server's clock misses
the rows whose lag is above `d`. Raw psycopg, no fluvial: the lag is the database's.

Run: .venv/bin/python benchmarks/measure_postgres_commit_lag.py [seconds per shape]
(PostgreSQL at 127.0.0.1:5432, database `test`, or FLUVIAL_PG_DSN).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from typing import Any

import psycopg
from _table import print_table

DSN = os.environ.get("FLUVIAL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
WRITERS = 8
POLL = 0.002
NOW = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
INSERT = (
    "INSERT INTO commit_lag (by_clock, by_xact) VALUES ("
    f"{NOW}, (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint)"
)


def write(statements: int, until: float) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        while time.monotonic() < until:
            with conn.transaction():
                for _ in range(statements):
                    conn.execute(INSERT)


def read(until: float, lags: list[tuple[int, int]]) -> None:
    seen: set[int] = set()
    watermark = 0  # every id up to it is seen
    with psycopg.connect(DSN, autocommit=True) as conn:
        while time.monotonic() < until:
            rows: list[Any] = conn.execute(
                f"SELECT id, by_clock, by_xact, {NOW} FROM commit_lag WHERE id > %s",
                (watermark,),
            ).fetchall()
            for id_, by_clock, by_xact, now in rows:
                if id_ not in seen:
                    seen.add(id_)
                    lags.append((now - by_clock, now - by_xact))
            while watermark + 1 in seen:
                watermark += 1
                seen.discard(watermark)
            time.sleep(POLL)


def measure(statements: int, seconds: float) -> list[tuple[int, int]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS commit_lag")
        conn.execute(
            "CREATE TABLE commit_lag (id bigserial PRIMARY KEY, by_clock bigint, by_xact bigint)"
        )
    until = time.monotonic() + seconds
    lags: list[tuple[int, int]] = []
    threads = [threading.Thread(target=write, args=(statements, until)) for _ in range(WRITERS)]
    threads.append(threading.Thread(target=read, args=(until + 0.5, lags)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE commit_lag")
    return lags


def row(shape: str, stamp: str, lags: list[int]) -> list[object]:
    ms = sorted(lag / 1000 for lag in lags)
    beyond = sum(1 for lag in ms if lag > 100) / len(ms)
    p99 = ms[int(len(ms) * 0.99)]
    return [shape, stamp, len(ms), statistics.median(ms), p99, ms[-1], f"{beyond:.4%}"]


def main(seconds: float) -> None:
    rows = []
    for statements in (1, 10):
        lags = measure(statements, seconds)
        shape = f"{WRITERS} writers, {statements} statement(s)/txn"
        rows.append(row(shape, "clock_timestamp()", [c for c, _ in lags]))
        rows.append(row(shape, "transaction_timestamp()", [x for _, x in lags]))
    print_table(
        f"Lag from a row's stamp to a reader first seeing it (ms; reader polls every "
        f"{POLL * 1000:.0f} ms)",
        ["shape", "stamp", "rows", "median", "p99", "max", "> 100 ms"],
        rows,
    )


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
