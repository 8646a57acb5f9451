"""The journal contract on the in-memory journal of the test kit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.journal.memory._journal import MemoryJournal  # noqa: E402
from fluvial.testing.journal_contract import JournalContract, JournalUnderTest  # noqa: E402


class TestMemoryJournal(JournalContract):
    @pytest.fixture
    async def journal(self) -> AsyncIterator[JournalUnderTest]:
        yield MemoryJournal()
