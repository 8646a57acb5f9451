"""The journal contract on the SQLite journal, in a real file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.journal.sqlite._journal import open_sqlite_journal  # noqa: E402
from fluvial.testing.journal_contract import JournalContract, JournalUnderTest  # noqa: E402


class TestSqliteJournal(JournalContract):
    @pytest.fixture
    async def journal(self, tmp_path: Path) -> AsyncIterator[JournalUnderTest]:
        async with open_sqlite_journal(tmp_path / "journal.db") as journal:
            yield journal
