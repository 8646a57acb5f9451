"""The Source contract, run against the local journal's source over SQLite and memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("fluvial.testing.source_contract")

from fluvial.journal.memory import MemoryJournal  # noqa: E402
from fluvial.journal.sqlite import open_sqlite_journal  # noqa: E402
from fluvial.projection._source import LocalJournalSources  # noqa: E402
from fluvial.testing.source_contract import SourceContract, SourceUnderTest  # noqa: E402


class TestSqliteJournalSource(SourceContract):
    @pytest.fixture
    async def source_under_test(self, tmp_path: Path) -> AsyncIterator[SourceUnderTest]:
        async with open_sqlite_journal(tmp_path / "journal.db") as journal:
            yield SourceUnderTest(LocalJournalSources(journal), journal.append)


class TestMemoryJournalSource(SourceContract):
    @pytest.fixture
    async def source_under_test(self) -> AsyncIterator[SourceUnderTest]:
        journal = MemoryJournal()
        yield SourceUnderTest(LocalJournalSources(journal), journal.append)
