"""What the PostgreSQL journal adds to the contract: a schema shared by several journals (as
several processes share it), its version, a server that is not there or drops connections,
and cancellation of a call whose transaction is in flight."""

from __future__ import annotations

import time

import psycopg
import pytest
import trio

from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange
from fluvial.core.records import EventRecord
from fluvial.journal.api import JournalClosed, JournalConflict
from fluvial.journal.postgres import (
    PostgresSchemaTooNew,
    PostgresUnavailable,
    open_postgres_journal,
)
from fluvial.journal.postgres._schema import SCHEMA_VERSION
from fluvial.testing.journal_contract import entity_ids, event, events, read_all
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

TIMEOUT = 10.0
(PID,) = entity_ids("Pg", SliceRange.all(), 1)


def _execute(schema: str, statement: str) -> None:
    with psycopg.connect(DSN, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(statement.encode())


async def test_a_reopened_schema_keeps_its_events_and_a_newer_version_is_refused(
    postgres_schema: str,
) -> None:
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        stored = list(await journal.append(events(PID, 1, 2)))
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        assert await read_all(journal, PID) == stored

    _execute(postgres_schema, "UPDATE fluvial_schema_version SET version = 99")
    with pytest.raises(PostgresSchemaTooNew) as too_new:
        async with open_postgres_journal(DSN, schema=postgres_schema):
            pass  # pragma: no cover
    assert (too_new.value.found, too_new.value.supported) == (99, SCHEMA_VERSION)
    _execute(postgres_schema, f"UPDATE fluvial_schema_version SET version = {SCHEMA_VERSION}")
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        assert await read_all(journal, PID) == stored  # nothing was changed


async def test_two_journals_on_one_schema_see_each_others_events_and_conflicts(
    postgres_schema: str,
) -> None:
    async with (
        open_postgres_journal(DSN, schema=postgres_schema, poll_interval=0.05) as first,
        open_postgres_journal(DSN, schema=postgres_schema, poll_interval=0.05) as second,
    ):
        seen = second.append_count()
        stored = list(await first.append(events(PID, 1, 2)))
        with trio.fail_after(TIMEOUT):
            # `second` learns of `first`'s commit only by polling: it wakes without a count.
            await second.wait_for_new_events(seen)
        assert second.append_count() == seen
        assert await read_all(second, PID) == stored
        with pytest.raises(JournalConflict):
            await second.append([event(PID, 2, data=b"rival")])
        stored += await second.append([event(PID, 3)])
        assert await read_all(first, PID) == stored


async def test_an_unreachable_server_raises_postgres_unavailable() -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(PostgresUnavailable) as unavailable:
        async with open_postgres_journal("postgresql://postgres@127.0.0.1:1/test"):
            pass  # pragma: no cover
    assert "127.0.0.1" in str(unavailable.value)


async def test_a_dropped_connection_is_replaced_and_the_call_retried(
    postgres_schema: str,
) -> None:
    """The server ends the pool's connection (pg_terminate_backend): the next read finds it
    broken and runs again on a new one; more faults are in test_postgres_faults.py."""
    async with open_postgres_journal(DSN, schema=postgres_schema, pool_size=1) as journal:
        stored = list(await journal.append(events(PID, 1, 1)))
        # The pool names its connections after the schema (application_name).
        _execute(
            postgres_schema,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = 'fluvial:{postgres_schema}'",
        )
        assert await journal.highest_seq_nr(str(PID)) == 1
        _execute(
            postgres_schema,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = 'fluvial:{postgres_schema}'",
        )
        stored += await journal.append(events(PID, 2, 1))  # its reply lost or not: answered
        assert await read_all(journal, PID) == stored


async def test_a_cancelled_append_whose_transaction_runs_completes_it_and_the_pool_goes_on(
    postgres_schema: str,
) -> None:
    """A cancel never cuts a transaction in half: the append blocked in the server (another
    transaction holds its seq nr, uncommitted) is cancelled, the blocker rolls back, and the
    append commits and returns; the connection is clean for the next call."""
    async with open_postgres_journal(DSN, schema=postgres_schema, pool_size=1) as journal:
        await journal.append(events(PID, 1, 1))
        blocker = await trio.to_thread.run_sync(_hold_seq_nr, postgres_schema, 2)
        appended: list[EventRecord] = []

        async def append() -> None:
            appended.extend(await journal.append(events(PID, 2, 1)))

        try:
            async with trio.open_nursery() as outside:
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(append)
                        await trio.to_thread.run_sync(_until_a_backend_waits_on_a_lock)
                        scope.cancel()
                        # The append waits for the server; let its blocker go, from outside.
                        outside.start_soon(trio.to_thread.run_sync, blocker.rollback)
        finally:
            blocker.close()
        assert scope.cancel_called
        assert [r.seq_nr for r in appended] == [2]  # it did everything and returned
        assert [r.seq_nr for r in await read_all(journal, PID)] == [1, 2]
        assert [r.seq_nr for r in await journal.append(events(PID, 3, 1))] == [3]


async def test_a_writer_that_passed_the_check_when_another_commits_the_seq_nr_conflicts(
    postgres_schema: str,
) -> None:
    """The race of two processes: another writer's transaction holds seq nr 2 (uncommitted)
    while the append checks and inserts it; it commits, and the append fails on the key."""
    async with open_postgres_journal(DSN, schema=postgres_schema, pool_size=1) as journal:
        await journal.append(events(PID, 1, 1))
        rival = await trio.to_thread.run_sync(_hold_seq_nr, postgres_schema, 2)
        conflicts: list[JournalConflict] = []

        async def append() -> None:
            try:
                await journal.append(events(PID, 2, 2))
            except JournalConflict as exc:
                conflicts.append(exc)

        try:
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(append)
                    await trio.to_thread.run_sync(_until_a_backend_waits_on_a_lock)
                    await trio.to_thread.run_sync(rival.commit)
        finally:
            rival.close()
        (conflict,) = conflicts
        assert (conflict.persistence_id, conflict.seq_nr) == (str(PID), 2)
        assert [r.write_timestamp for r in await read_all(journal, PID)][1:] == [1]  # the rival's
        assert await journal.highest_seq_nr(str(PID)) == 2


def _hold_seq_nr(schema: str, seq_nr: int) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(DSN, options=f"-c search_path={schema}")
    conn.execute(
        "INSERT INTO event_journal (persistence_id, seq_nr, entity_type, slice, db_timestamp) "
        "VALUES (%s, %s, 'Pg', 0, 1)",
        (str(PID), seq_nr),
    )
    return conn  # its transaction stays open


def _until_a_backend_waits_on_a_lock() -> None:
    # Polling the server's view: the append's thread gives trio no signal while it waits.
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(DSN, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.005)
    raise AssertionError("the append never waited for the blocker's lock")


async def test_calls_after_the_block_raise_journal_closed(postgres_schema: str) -> None:
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        pass
    with pytest.raises(JournalClosed):
        await journal.highest_seq_nr(str(PID))


@pytest.mark.parametrize(
    "arguments",
    [
        {"schema": "Fluvial"},
        {"schema": "a;b"},
        {"pool_size": 0},
        {"poll_interval": 0},
        {"retry_for": -1},
        {"retry_for": float("nan")},
    ],
)
def test_arguments_that_cannot_work_raise_usage_error(arguments: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        open_postgres_journal(DSN, **arguments)  # type: ignore[arg-type]
