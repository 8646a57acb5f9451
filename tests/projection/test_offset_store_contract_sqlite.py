"""The offset store contract on the SQLite store, in a real journal file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("fluvial.testing.offset_store_contract")

from fluvial.journal.sqlite import SqliteOffsetStore, open_sqlite_journal  # noqa: E402
from fluvial.testing.offset_store_contract import (  # noqa: E402
    ManualClock,
    OffsetStoreContract,
    StoreUnderTest,
)


def _note(text: str) -> Callable[[sqlite3.Connection], None]:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO contract_note (note) VALUES (?)", (text,))

    return write


def _clear_notes(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM contract_note")


class TestSqliteOffsetStore(OffsetStoreContract):
    @pytest.fixture
    async def offset_store(
        self, tmp_path: Path
    ) -> AsyncIterator[StoreUnderTest[sqlite3.Connection]]:
        async with open_sqlite_journal(tmp_path / "journal.db") as journal:

            def create(txn: Any) -> None:
                txn.connection.execute(
                    "CREATE TABLE contract_note (n INTEGER PRIMARY KEY, note TEXT NOT NULL)"
                )

            await journal.database.write(create)

            async def notes() -> list[str]:
                def query(conn: sqlite3.Connection) -> list[str]:
                    rows = conn.execute("SELECT note FROM contract_note ORDER BY n")
                    return [note for (note,) in rows]

                return await journal.database.read(query)

            clock = ManualClock()
            yield StoreUnderTest(
                store=SqliteOffsetStore(journal.database, clock=clock),
                journal=journal,
                clock=clock,
                note=_note,
                clear_notes=_clear_notes,
                notes=notes,
            )
