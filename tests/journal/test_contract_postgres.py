"""The journal contract on the PostgreSQL journal, each test in a fresh schema of `test`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.journal.postgres import open_postgres_journal  # noqa: E402
from fluvial.testing.journal_contract import JournalContract, JournalUnderTest  # noqa: E402
from postgres_server import DSN, postgres_schema  # noqa: E402

__all__ = ["postgres_schema"]  # the fixture, imported for pytest


class TestPostgresJournal(JournalContract):
    @pytest.fixture
    async def journal(self, postgres_schema: str) -> AsyncIterator[JournalUnderTest]:
        async with open_postgres_journal(DSN, schema=postgres_schema, pool_size=4) as journal:
            yield journal
