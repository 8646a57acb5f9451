"""The Source contract, run against the local journal's source over SQLite, memory and
PostgreSQL (each PostgreSQL test in a fresh schema of `test`, dropped after it; there the
suite also commits events late, as a concurrent writer does)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import psycopg
import pytest
import trio
from msgspec.structs import replace

pytest.register_assert_rewrite("fluvial.testing.source_contract")

from fluvial.core.records import EventRecord  # noqa: E402
from fluvial.journal.memory import MemoryJournal  # noqa: E402
from fluvial.journal.postgres import open_postgres_journal  # noqa: E402
from fluvial.journal.postgres._event_rows import append_events  # noqa: E402
from fluvial.journal.sqlite import open_sqlite_journal  # noqa: E402
from fluvial.projection._source import LocalJournalSources  # noqa: E402
from fluvial.testing.source_contract import SourceContract, SourceUnderTest  # noqa: E402
from postgres_server import DSN, postgres_schema  # noqa: E402

__all__ = ["postgres_schema"]  # the fixture, imported for pytest


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


def _late_writer(
    schema: str,
) -> Callable[[Sequence[EventRecord]], AbstractAsyncContextManager[Sequence[EventRecord]]]:
    """`SourceUnderTest.write_late` on `schema`: another writer, a connection of its own
    running the journal's append statement in a transaction it commits when the block
    exits (rolled back if the block raises)."""

    @contextlib.asynccontextmanager
    async def write_late(events: Sequence[EventRecord]) -> AsyncIterator[Sequence[EventRecord]]:
        conn = await trio.to_thread.run_sync(
            lambda: psycopg.connect(DSN, options=f"-c search_path={schema}")
        )
        try:
            # psycopg opens the transaction with the first statement; it stays open.
            first = await trio.to_thread.run_sync(append_events, conn, events, 0)
            yield [
                replace(e, timestamp=first + i, write_timestamp=first + i)
                for i, e in enumerate(events)
            ]
            await trio.to_thread.run_sync(conn.commit)
        finally:
            await trio.to_thread.run_sync(conn.close)

    return write_late


class TestPostgresJournalSource(SourceContract):
    @pytest.fixture
    async def source_under_test(self, postgres_schema: str) -> AsyncIterator[SourceUnderTest]:
        # Polling often: the query follows other connections' commits by polling.
        async with open_postgres_journal(
            DSN, schema=postgres_schema, pool_size=4, poll_interval=0.05
        ) as journal:
            yield SourceUnderTest(
                LocalJournalSources(journal), journal.append, _late_writer(postgres_schema)
            )
