"""The consumer-filter migration on a file (SQLite v8 -> v9) and a schema (PostgreSQL v2 -> v3)
written before it: opened again, it has the table, its events and offsets as they were, and a
consumer's filter is stored and read back."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import psycopg

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import ExcludeEntityIds
from fluvial.core.ids import SliceRange
from fluvial.journal.postgres import open_postgres_journal
from fluvial.journal.postgres._schema import SCHEMA_VERSION as POSTGRES_VERSION
from fluvial.journal.sqlite import open_sqlite_journal
from fluvial.journal.sqlite._schema import SCHEMA_VERSION as SQLITE_VERSION
from fluvial.testing.journal_contract import entity_ids, events, read_all
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

FILTER = Filter.of(ExcludeEntityIds({"a"}))


async def test_a_sqlite_file_of_v8_gains_the_consumer_filters(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    [pid] = entity_ids("Mig", SliceRange.all(), 1)
    async with open_sqlite_journal(path) as journal:
        stored = await journal.append(events(pid, 1, 2))
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as v8 left it
        conn.execute("DROP TABLE consumer_filter")
        conn.execute("PRAGMA user_version = 8")
        conn.commit()
    assert SQLITE_VERSION == 9
    async with open_sqlite_journal(path) as journal:
        assert await read_all(journal, pid) == list(stored)
        store = journal.offset_store()
        assert await store.load_consumer_filter("s") is None
        await store.save_consumer_filter("s", FILTER)
        assert await store.load_consumer_filter("s") == FILTER
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SQLITE_VERSION,)


async def test_a_postgres_schema_of_v2_gains_the_consumer_filters(postgres_schema: str) -> None:
    [pid] = entity_ids("Mig", SliceRange.all(), 1)
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        stored = await journal.append(events(pid, 1, 2))
    with psycopg.connect(DSN, autocommit=True, options=f"-c search_path={postgres_schema}") as conn:
        conn.execute("DROP TABLE consumer_filter")
        conn.execute("UPDATE fluvial_schema_version SET version = 2")
    assert POSTGRES_VERSION == 3
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        assert await read_all(journal, pid) == list(stored)
        store = journal.offset_store()
        assert await store.load_consumer_filter("s") is None
        _, after = await store.update_consumer_filter("s", ExcludeEntityIds({"a"}))
        assert after == FILTER == await store.load_consumer_filter("s")
