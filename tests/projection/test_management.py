"""The offset store's management API on names it does not know, rebuilding a read model, the
read model's migrations, and waiting until a projection has caught up."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from fluvial.core.errors import DataError, UsageError
from fluvial.core.ids import SliceRange
from fluvial.core.projection_errors import (
    ReadModelClearFailed,
    ReadModelMigrationFailed,
    UnknownEvent,
    UnknownProjection,
)
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._handlers import AtLeastOnce, ExactlyOnce, GroupedExactlyOnce
from fluvial.projection._runner import serve_projection
from projection.projection_helpers import (
    ENTITY_TYPE,
    MODEL_TABLES,
    NAME,
    QUIET,
    REGISTRY,
    Appender,
    Envelope,
    StallableQuery,
    apply_to_model,
    assert_model_is_the_fold,
    management_calls,
    model_size,
    projection,
    read_model,
    start,
    stored_seq_nr,
    wait_for_model,
    wait_for_stored,
)


async def run_until_handled(journal: SqliteJournal, size: int) -> None:
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model)))
        await wait_for_model(journal, size)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "call", ["offsets", "backlog", "set_offset", "skip_event", "reset", "wait_until_caught_up"]
)
async def test_management_calls_on_an_unknown_projection_raise_a_usage_error(
    journal: SqliteJournal, call: str
) -> None:
    appender = Appender(journal)
    await appender.append("a", 1)
    await run_until_handled(journal, 1)
    store = SqliteOffsetStore(journal.database)
    with pytest.raises(UnknownProjection) as unknown:
        await management_calls(store, "modle")[call]()  # a typo
    assert isinstance(unknown.value, UsageError)
    assert unknown.value.projection == "modle"
    assert "no projection named 'modle'" in str(unknown.value)
    assert await stored_seq_nr(journal, "Counter|a") == 1  # nothing changed


async def test_backlog_and_skip_event_refuse_another_entity_type_and_a_missing_event(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    await appender.append("a", 1)
    await run_until_handled(journal, 1)
    store = SqliteOffsetStore(journal.database)
    with pytest.raises(UnknownProjection, match="consumes 'Counter' events, not 'Countr'"):
        await store.backlog(NAME, "Countr", SliceRange.all())
    with pytest.raises(UnknownEvent) as missing:
        await store.skip_event(NAME, "Counter|a", 9)
    assert isinstance(missing.value, UsageError) and isinstance(missing.value, LookupError)
    assert (missing.value.persistence_id, missing.value.seq_nr) == ("Counter|a", 9)
    with pytest.raises(UnknownProjection):
        await store.register(NAME, "Other")
    assert await store.backlog(NAME, ENTITY_TYPE, SliceRange.all()) == 0


async def test_reset_keeps_the_read_model_and_clear_read_model_rebuilds_it_in_one_transaction(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    await appender.append("b", 3)
    await run_until_handled(journal, 3)
    store = SqliteOffsetStore(journal.database)

    def clear(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM model")
        conn.execute("DELETE FROM model_order")

    def broken_clear(conn: sqlite3.Connection) -> None:
        clear(conn)
        raise ValueError("the user's clear failed")

    with pytest.raises(ValueError, match="clear failed"):
        await store.reset(NAME, clear_read_model=broken_clear)
    assert await model_size(journal) == 3  # nothing of it happened
    assert await stored_seq_nr(journal, "Counter|a") == 2

    await store.reset(NAME, clear_read_model=clear)
    assert await model_size(journal) == 0
    assert await store.offsets(NAME) == {}
    await run_until_handled(journal, 3)
    await assert_model_is_the_fold(journal)  # rebuilt: each event once

    await store.reset(NAME)  # keeps the read model: the next run applies everything again
    assert await model_size(journal) == 3
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model)))
        await wait_for_stored(journal, "Counter|a", 2)
        await wait_for_stored(journal, "Counter|b", 1)
        nursery.cancel_scope.cancel()
    assert {times for _, times in (await read_model(journal)).values()} == {2}


async def test_read_model_migrations_run_once_per_file_in_order(journal: SqliteJournal) -> None:
    ran: list[str] = []

    def v1(conn: sqlite3.Connection) -> None:
        ran.append("v1")
        conn.execute("CREATE TABLE totals (pid TEXT PRIMARY KEY, total INTEGER NOT NULL)")

    def v2(conn: sqlite3.Connection) -> None:
        ran.append("v2")
        conn.execute("ALTER TABLE totals ADD COLUMN events INTEGER NOT NULL DEFAULT 0")

    def handle(conn: sqlite3.Connection, envelope: Envelope) -> None:
        conn.execute(
            "INSERT INTO totals VALUES (?, ?, 1) ON CONFLICT (pid) DO UPDATE SET "
            "total = total + excluded.total, events = events + 1",
            (envelope.persistence_id, envelope.event.amount),
        )
        apply_to_model(conn, envelope)

    appender = Appender(journal)
    await appender.append("a", 1, 2)

    async def run(handler: Any, size: int) -> None:
        async with trio.open_nursery() as nursery:
            await start(nursery, journal, projection(handler))
            await wait_for_model(journal, size)
            nursery.cancel_scope.cancel()

    await run(ExactlyOnce(handle, migrations=[v1, v2]), 2)
    await run(ExactlyOnce(handle, migrations=[v1, v2]), 2)
    assert ran == ["v1", "v2"]

    def v3(conn: sqlite3.Connection) -> None:
        ran.append("v3")
        conn.execute("CREATE INDEX totals_by_total ON totals (total)")

    await appender.append("a", 3)

    def handle_group(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            handle(conn, envelope)

    await run(GroupedExactlyOnce(handle_group, migrations=[v1, v2, v3]), 3)
    assert ran == ["v1", "v2", "v3"]

    def totals(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
        return conn.execute("SELECT pid, total, events FROM totals").fetchall()

    assert await journal.database.read(totals) == [("Counter|a", 6, 3)]
    with pytest.raises(UsageError, match="at version 3, newer than the 2 migrations"):
        await serve_projection(
            journal, REGISTRY, projection(ExactlyOnce(handle, migrations=[v1, v2]))
        )


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.mark.parametrize("failure", ["its own exception", "a sqlite3 error"])
async def test_a_failing_migration_undoes_all_and_is_raised_at_start(
    journal: SqliteJournal, failure: str
) -> None:
    def v1(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE totals (pid TEXT PRIMARY KEY)")

    def v2(conn: sqlite3.Connection) -> None:
        if failure == "its own exception":
            raise ValueError("bad migration")
        conn.execute("CREATE INDEX totals_by_total ON totals (total)")  # no such column

    raised = ValueError if failure == "its own exception" else ReadModelMigrationFailed
    for already_run in ([], [v1]):
        if already_run:
            await SqliteOffsetStore(journal.database).migrate_read_model(NAME, already_run)
        with pytest.raises(raised) as failed:  # before it started
            p = projection(ExactlyOnce(apply_to_model, migrations=[v1, v2]))
            await serve_projection(journal, REGISTRY, p)
        assert ("totals" in await journal.database.read(tables)) == bool(already_run)
        if isinstance(failed.value, ReadModelMigrationFailed):
            assert isinstance(failed.value, DataError)
            assert (failed.value.projection, failed.value.version) == (NAME, 2)
            assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
            message = "read-model migration 2 failed in SQLite (no such column: total)"
            assert message in str(failed.value)
    async with trio.open_nursery() as nursery:  # the failed start gave its lease up
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model)))
        nursery.cancel_scope.cancel()


async def test_a_clear_read_model_failing_in_sqlite_raises_read_model_clear_failed(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    await run_until_handled(journal, 2)
    store = SqliteOffsetStore(journal.database)

    def clear(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM model")
        conn.execute("DELETE FROM model_ordr")  # a typo

    with pytest.raises(ReadModelClearFailed) as failed:
        await store.reset(NAME, clear_read_model=clear)
    assert isinstance(failed.value, DataError) and failed.value.projection == NAME
    assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    assert "no such table: model_ordr" in str(failed.value)
    assert await model_size(journal) == 2  # the reset did not happen
    assert await stored_seq_nr(journal, "Counter|a") == 2


@pytest.mark.parametrize("kind", ["exactly-once", "at-least-once"])
async def test_wait_until_caught_up_returns_once_everything_appended_before_it_is_handled(
    journal: SqliteJournal, kind: str
) -> None:
    handled: list[tuple[str, int]] = []

    async def record(envelope: Envelope) -> None:
        handled.append((envelope.persistence_id, envelope.seq_nr))

    handler: Any = (
        ExactlyOnce(apply_to_model)
        if kind == "exactly-once"
        else AtLeastOnce(record, save_every=7, save_after=0.05)
    )
    appender = Appender(journal)
    for i in range(300):
        await appender.append(f"e{i % 30}", i)
    store = SqliteOffsetStore(journal.database)
    await store.register(NAME, ENTITY_TYPE)
    with trio.move_on_after(0.2) as waited:  # nothing runs the projection
        await store.wait_until_caught_up(NAME)
    assert waited.cancelled_caught
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(handler))
        with trio.fail_after(15):
            await store.wait_until_caught_up(NAME)
        assert await store.backlog(NAME, ENTITY_TYPE, SliceRange.all()) == 0
        for i in range(30):
            assert await stored_seq_nr(journal, f"Counter|e{i}") == 10
        await appender.append("late", 1)
        with trio.fail_after(15):
            await store.wait_until_caught_up(NAME, SliceRange(0, 1023))
        assert await stored_seq_nr(journal, "Counter|late") == 1
        nursery.cancel_scope.cancel()


UNDO_REPLICATION_METADATA = [
    "DROP INDEX event_journal_by_slices",
    "CREATE INDEX event_journal_by_time ON event_journal (entity_type, db_timestamp)",
    "ALTER TABLE event_journal DROP COLUMN write_timestamp",
    "ALTER TABLE event_journal DROP COLUMN origin_replica",
    "ALTER TABLE event_journal DROP COLUMN origin_seq_nr",
    "ALTER TABLE event_journal RENAME COLUMN version_vector TO metadata",
    "DROP INDEX snapshot_by_slices",
    "ALTER TABLE snapshot DROP COLUMN event_timestamp",
    "ALTER TABLE snapshot DROP COLUMN tags",
]


async def test_a_file_of_schema_v5_knows_its_projections_after_the_migration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    async with open_sqlite_journal(path) as journal:
        await Appender(journal).append("a", 1, 2)
        await journal.database.write(
            lambda txn: [txn.connection.execute(statement) for statement in MODEL_TABLES]
        )
        await run_until_handled(journal, 2)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as schema v5 left it
        conn.execute("DROP TABLE projection")
        conn.execute("DROP TABLE projection_lease")
        # Nor had v5 what the replication-metadata migration (after v6) adds, nor placeholders.
        for undo in UNDO_REPLICATION_METADATA:
            conn.execute(undo)
        conn.execute("ALTER TABLE projection_entity DROP COLUMN placeholders")
        conn.execute("DROP TABLE consumer_filter")  # nor a consumer's filters (v9)
        conn.execute("PRAGMA user_version = 5")
        conn.commit()
    async with open_sqlite_journal(path) as journal:
        store = SqliteOffsetStore(journal.database)
        assert await store.backlog(NAME, ENTITY_TYPE, SliceRange.all()) == 0
        with pytest.raises(UnknownProjection):
            await store.backlog(NAME, "Other", SliceRange.all())
        await Appender(journal).append("b", 3)
        await run_until_handled(journal, 3)
        await assert_model_is_the_fold(journal)


async def test_wait_until_caught_up_waits_for_the_query_to_pass_what_the_live_path_handled(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = StallableQuery(journal, monkeypatch)
    appender = Appender(journal)
    await appender.append("a", 1)
    store = SqliteOffsetStore(journal.database)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model), source=QUIET))
        await store.wait_until_caught_up(NAME)
        await query.stall_now()
        await appender.append("a", 2)
        await wait_for_model(journal, 2)  # handled, by the live path only
        with trio.move_on_after(0.5) as waited:
            await store.wait_until_caught_up(NAME)
        assert waited.cancelled_caught  # the backlog still counts a#2
        assert await store.backlog(NAME, ENTITY_TYPE, SliceRange.all()) == 1
        nursery.cancel_scope.cancel()
