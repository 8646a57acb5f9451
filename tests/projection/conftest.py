"""Fixtures of the projection tests: a journal file with the read model's tables, and a
virtual clock that suits SQLite's threads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from projection.projection_helpers import MODEL_TABLES


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    async with open_sqlite_journal(tmp_path / "journal.db") as journal:

        def create(txn: Any) -> None:
            for statement in MODEL_TABLES:
                txn.connection.execute(statement)

        await journal.database.write(create)
        yield journal


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    """Virtual time that jumps to the next deadline once nothing has happened for 0.1 s.

    Not `autojump_clock` (which jumps at once): SQLite runs in threads, and a clock that
    jumped while a thread works would add the next timer's delay to the time of the I/O.
    """
    return trio.testing.MockClock(autojump_threshold=0.1)
