"""`Journal.latest_event_timestamp` (what a lag asks, again and again), per call, on SQLite and
PostgreSQL, beside its raw statement run on the driver and beside reading the range without
payloads (what the producer's `LatestEventTimestamp` did before the query), in one run.

100,000 events of one entity type over every slice (and as many of another type, after them,
so that the type's newest entry is not the index's last), for four slice ranges: all slices,
256 slices, one slice with events, and one slice without events (SQLite's worst case: it reads
the entity type's index entries, never a row; PostgreSQL descends the index once per slice).
PostgreSQL rows need the server at 127.0.0.1:5432 (or FLUVIAL_PG_DSN); without it they are
left out.

Run: .venv/bin/python benchmarks/bench_latest_timestamp.py   (or `just bench-lag`)
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import trio
from _table import print_table

from fluvial.core.ids import SliceRange
from fluvial.journal.api import Journal
from fluvial.journal.postgres import open_postgres_journal
from fluvial.journal.postgres._event_rows import LATEST_EVENT_TIMESTAMP as POSTGRES_LATEST
from fluvial.journal.queries import current_events_by_slices
from fluvial.journal.sqlite import open_sqlite_journal
from fluvial.journal.sqlite._event_rows import LATEST_EVENT_TIMESTAMP as SQLITE_LATEST
from fluvial.testing.journal_contract import entity_ids, events

DSN = os.environ.get("FLUVIAL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ENTITY_TYPE, OTHER = "Measured", "Other"
ENTITIES, PER_ENTITY = 2_000, 50  # 100,000 events of each type
CALLS = 50


async def _fill(journal: Journal) -> list[tuple[str, SliceRange]]:
    """The events; the named ranges to ask for."""
    for entity_type in (ENTITY_TYPE, OTHER):
        pids = entity_ids(entity_type, SliceRange.all(), ENTITIES)
        for first in range(1, PER_ENTITY + 1, 10):
            for pid in pids:
                await journal.append(events(pid, first, 10))
    slices = {p.slice for p in entity_ids(ENTITY_TYPE, SliceRange.all(), ENTITIES)}
    empty = next(s for s in range(1024) if s not in slices)
    one = min(slices)
    return [
        ("all slices", SliceRange.all()),
        ("256 slices", SliceRange(0, 255)),
        ("1 slice", SliceRange(one, one)),
        ("1 slice, no events", SliceRange(empty, empty)),
    ]


async def _per_call_ms(call: Callable[[], Awaitable[object]]) -> float:
    await call()  # warm
    start = time.perf_counter()
    for _ in range(CALLS):
        await call()
    return (time.perf_counter() - start) / CALLS * 1000


async def _scan_ms(journal: Journal, slices: SliceRange) -> float:
    start = time.perf_counter()
    async for _ in current_events_by_slices(journal, ENTITY_TYPE, slices, with_payloads=False):
        pass
    return (time.perf_counter() - start) * 1000


async def _rows(
    journal: Journal, ranges: list[tuple[str, SliceRange]], raw: Callable[[SliceRange], Any]
) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, slices in ranges:
        raw_ms = await _per_call_ms(functools.partial(trio.to_thread.run_sync, raw, slices))
        query_ms = await _per_call_ms(
            functools.partial(journal.latest_event_timestamp, ENTITY_TYPE, slices)
        )
        scan_ms = await _scan_ms(journal, slices)
        rows.append([name, raw_ms, query_ms, query_ms / raw_ms, scan_ms, scan_ms / query_ms])
    return rows


HEADERS = ["range", "raw ms", "query ms", "query/raw", "range read ms", "read/query"]


async def _sqlite() -> None:
    path = Path(tempfile.mkdtemp()) / "journal.db"
    async with open_sqlite_journal(path) as journal:
        ranges = await _fill(journal)

        conn = sqlite3.connect(path, check_same_thread=False)  # one thread at a time

        def raw(slices: SliceRange) -> object:
            parameters = {"entity_type": ENTITY_TYPE, "min": slices.min, "max": slices.max}
            return conn.execute(SQLITE_LATEST, parameters).fetchone()

        rows = await _rows(journal, ranges, raw)
        conn.close()
    print_table("SQLite (raw: sqlite3 on one open connection, in a thread)", HEADERS, rows)


async def _postgres() -> None:
    try:
        psycopg.connect(DSN, connect_timeout=3).close()
    except psycopg.Error as error:
        print(f"\nPostgreSQL left out: {error}")
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        async with open_postgres_journal(DSN, schema=schema) as journal:
            ranges = await _fill(journal)
            conn = psycopg.connect(DSN, autocommit=True, options=f"-c search_path={schema}")
            conn.execute("ANALYZE event_journal")

            def raw(slices: SliceRange) -> object:
                parameters = {"entity_type": ENTITY_TYPE, "min": slices.min, "max": slices.max}
                return conn.execute(POSTGRES_LATEST, parameters).fetchone()

            rows = await _rows(journal, ranges, raw)
            conn.close()
        print_table("PostgreSQL (raw: psycopg on one open connection)", HEADERS, rows)
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


async def main() -> None:
    print(f"{ENTITIES * PER_ENTITY:,} events of the entity type asked for, {CALLS} calls each")
    await _sqlite()
    await _postgres()


if __name__ == "__main__":
    trio.run(main)
