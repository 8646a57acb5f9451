"""The latest-event-timestamp query of each SQL journal reads the by-slices index (a lag asked
every few seconds must not scan the journal): the plans, on journals big enough that the
planner has a choice. The contract (`fluvial.testing.journal_contract`) checks the answers."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import psycopg
import trio

from fluvial.core.ids import SliceRange
from fluvial.journal.postgres import open_postgres_journal
from fluvial.journal.postgres._event_rows import (
    LATEST_EVENT_TIMESTAMP as POSTGRES_LATEST,
)
from fluvial.journal.sqlite._event_rows import LATEST_EVENT_TIMESTAMP as SQLITE_LATEST
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.testing.journal_contract import entity_ids, events
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

ENTITY_TYPE = "Planned"
PARAMETERS = {"entity_type": ENTITY_TYPE, "min": 100, "max": 355}


async def test_sqlite_reads_the_by_slices_index_backwards_without_sorting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    async with open_sqlite_journal(path) as journal:
        for entity_type in (ENTITY_TYPE, "Other"):
            for pid in entity_ids(entity_type, SliceRange.all(), 300):
                await journal.append(events(pid, 1, 3))
        latest = await journal.latest_event_timestamp(ENTITY_TYPE, SliceRange(100, 355))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        plan = " ".join(
            str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {SQLITE_LATEST}", PARAMETERS)
        )
        (answer,) = conn.execute(SQLITE_LATEST, PARAMETERS).fetchone()
    assert "COVERING INDEX event_journal_by_slices" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # the index's order, no sort
    assert answer == latest


async def test_postgres_descends_the_by_slices_index_once_per_slice(postgres_schema: str) -> None:
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        with trio.fail_after(30):
            await journal.append(events(entity_ids(ENTITY_TYPE, SliceRange.all(), 1)[0], 1, 1))
    options = f"-c search_path={postgres_schema}"
    with psycopg.connect(DSN, autocommit=True, options=options) as conn:
        # 60,000 events of two entity types over every slice: a scan would be the planner's
        # choice for a max() over a range of 256 slices.
        conn.execute(
            "INSERT INTO event_journal (persistence_id, seq_nr, entity_type, slice, db_timestamp)"
            " SELECT 'e' || (n %% 3000), n / 3000 + 1, CASE WHEN n %% 2 = 0 THEN %(entity_type)s"
            " ELSE 'Other' END, n %% 1024, 1000000 + n FROM generate_series(0, 59999) AS n",
            {"entity_type": ENTITY_TYPE},
        )
        conn.execute("ANALYZE event_journal")
        rows = conn.execute(f"EXPLAIN {POSTGRES_LATEST}", PARAMETERS).fetchall()
        plan = "\n".join(str(row[0]) for row in rows)
        (answer,) = conn.execute(POSTGRES_LATEST, PARAMETERS).fetchone()  # type: ignore[misc]
        (expected,) = conn.execute(  # type: ignore[misc]
            "SELECT max(db_timestamp) FROM event_journal WHERE entity_type = %(entity_type)s "
            "AND slice BETWEEN %(min)s AND %(max)s",
            PARAMETERS,
        ).fetchone()
    assert "Scan Backward using event_journal_by_slices" in plan, plan
    assert "Seq Scan on event_journal" not in plan, plan
    assert answer == expected
