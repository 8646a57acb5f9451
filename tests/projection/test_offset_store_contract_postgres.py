"""The offset store contract on the PostgreSQL store, each test in a fresh schema of `test`,
and what is its own: one store per journal, on the database's clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
import trio

pytest.register_assert_rewrite("fluvial.testing.offset_store_contract")

from fluvial.core.ids import SliceRange  # noqa: E402
from fluvial.core.projection_errors import ProjectionConflict, ProjectionLeaseHeld  # noqa: E402
from fluvial.journal.postgres import (  # noqa: E402
    PostgresOffsetStore,
    open_postgres_journal,
)
from fluvial.projection.api import HasOffsetStore  # noqa: E402
from fluvial.testing.journal_contract import entity_ids, events  # noqa: E402
from fluvial.testing.offset_store_contract import (  # noqa: E402
    ManualClock,
    OffsetStoreContract,
    StoreUnderTest,
)
from postgres_server import DSN, postgres_schema  # noqa: E402

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

Connection = psycopg.Connection[tuple[object, ...]]


def _note(text: str) -> Callable[[Connection], None]:
    def write(conn: Connection) -> None:
        conn.execute("INSERT INTO contract_note (note) VALUES (%s)", (text,))

    return write


def _clear_notes(conn: Connection) -> None:
    conn.execute("DELETE FROM contract_note")


def _connect(schema: str) -> Connection:
    """A connection of the test's own, beside the journal's pool."""
    return psycopg.connect(DSN, autocommit=True, options=f"-c search_path={schema}")


class TestPostgresOffsetStore(OffsetStoreContract):
    @pytest.fixture
    async def offset_store(self, postgres_schema: str) -> AsyncIterator[StoreUnderTest[Connection]]:
        async with open_postgres_journal(
            DSN, schema=postgres_schema, pool_size=4, poll_interval=0.05
        ) as journal:

            def create() -> None:
                with _connect(postgres_schema) as conn:
                    conn.execute(
                        "CREATE TABLE contract_note (n serial PRIMARY KEY, note text NOT NULL)"
                    )

            await trio.to_thread.run_sync(create)

            async def notes() -> list[str]:
                def query() -> list[str]:
                    with _connect(postgres_schema) as conn:
                        rows = conn.execute("SELECT note FROM contract_note ORDER BY n")
                        return [str(note) for (note,) in rows]

                return await trio.to_thread.run_sync(query)

            clock = ManualClock()
            yield StoreUnderTest(
                store=PostgresOffsetStore(journal, clock=clock),
                journal=journal,
                clock=clock,
                note=_note,
                clear_notes=_clear_notes,
                notes=notes,
            )


async def test_a_postgres_journal_keeps_one_offset_store_on_the_database_clock(
    postgres_schema: str,
) -> None:
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        assert isinstance(journal, HasOffsetStore)
        store = journal.offset_store()
        assert journal.offset_store() is store
        before = time.time()
        lease = await store.acquire_lease(
            "p", "Counter", SliceRange.all(), owner="a", duration=30.0
        )
        # The server runs on this machine: its clock is this one, give or take.
        assert before + 30.0 - 5.0 < lease.expires_at < time.time() + 30.0 + 5.0
        assert await store.offsets("p") == {}


async def test_two_journals_on_one_schema_share_offsets_and_leases(postgres_schema: str) -> None:
    async with (
        open_postgres_journal(DSN, schema=postgres_schema) as first,
        open_postgres_journal(DSN, schema=postgres_schema) as second,
    ):
        await first.offset_store().acquire_lease(
            "p", "Counter", SliceRange.all(), owner="a", duration=30.0
        )
        with pytest.raises(ProjectionLeaseHeld) as held:
            await second.offset_store().acquire_lease(
                "p", "Counter", SliceRange(0, 0), owner="b", duration=30.0
            )
        assert held.value.holder == "a"


def _wait_until_it_waits_for_a_lock(schema: str) -> None:
    """Return once a connection of the journal on `schema` waits for a row lock (the server
    says so), polling it."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'",
                (f"fluvial:{schema}",),
            ).fetchone()
            if row and row[0]:
                return
            conn.execute("SELECT pg_sleep(0.01)")


async def test_a_save_during_a_management_call_of_another_process_waits_and_conflicts(
    postgres_schema: str,
) -> None:
    """A save that reads the generation while another process's management call (uncommitted)
    has bumped it waits for that call, then sees the new generation: it never slips its
    changes in under a reset that commits after it."""
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        store = journal.offset_store()
        (pid,) = entity_ids("Counter", SliceRange.all(), 1)
        stored = await journal.append(events(pid, 1, 1))
        await store.register("p", "Counter")
        tracker = await store.load("p", SliceRange.all(), window=60_000_000)
        tracker.accept(stored[0])
        tracker.passed(stored[0])
        with _connect(postgres_schema) as other, trio.fail_after(10):
            other.execute("BEGIN")
            other.execute("UPDATE projection SET generation = generation + 1")
            async with trio.open_nursery() as nursery:
                refused = trio.Event()

                async def save() -> None:
                    with pytest.raises(ProjectionConflict):
                        await store.save("p", tracker.slices, tracker.take_changes())
                    refused.set()

                nursery.start_soon(save)
                await trio.to_thread.run_sync(
                    _wait_until_it_waits_for_a_lock, postgres_schema, abandon_on_cancel=True
                )
                assert not refused.is_set()
                other.execute("COMMIT")
        assert await store.load_entity("p", str(pid)) is None
