"""Two instances of one projection never apply an event twice: the lease of a slice range
refuses a second instance at start, is renewed while the instance runs and is taken over once
it expires; and an instance that runs anyway (its lease expired and was taken over) loses the
exactly-once commit's compare-and-set and stops with ProjectionConflict, writing nothing."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import trio
import trio.testing

from fluvial.core.ids import SliceRange
from fluvial.core.projection_errors import ProjectionConflict, ProjectionLeaseHeld
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import Lease, SqliteOffsetStore
from fluvial.projection._handlers import AtLeastOnce, ExactlyOnce, Handler
from fluvial.projection._runner import Projection, serve_projection
from projection.projection_helpers import (
    ENTITY_TYPE,
    NAME,
    QUIET,
    REGISTRY,
    Appender,
    Recorder,
    apply_to_model,
    assert_model_is_the_fold,
    exactly,
    projection,
    read_model,
    start,
    stored_seq_nr,
    trio_clock,
    wait_for_model,
)


async def serve_until_conflict(
    journal: SqliteJournal,
    p: Projection[Any],
    conflicts: list[tuple[float, ProjectionConflict]],
    offsets: SqliteOffsetStore | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await serve_projection(journal, REGISTRY, p, offsets=offsets, task_status=task_status)
    except ProjectionLeaseHeld:
        raise  # refused at start: out of nursery.start
    except ProjectionConflict as exc:
        conflicts.append((trio.current_time(), exc))


async def test_a_second_instance_that_skipped_the_lease_loses_the_compare_and_set(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both instances believe they hold the lease, as after a takeover of an instance that
    # kept running: only the compare-and-set stands between them and double application.
    async def no_lease(
        self: SqliteOffsetStore, projection: str, entity_type: str, slices: SliceRange, **_: Any
    ) -> Lease:
        await self.register(projection, entity_type)
        return Lease(projection, slices, "anyone", float("inf"))

    monkeypatch.setattr(SqliteOffsetStore, "acquire_lease", no_lease)
    appender = Appender(journal)
    for i in range(200):
        await appender.append(f"e{i % 20}", i)
    p = projection(ExactlyOnce(apply_to_model), source=QUIET)
    conflicts: list[tuple[float, ProjectionConflict]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            await nursery.start(serve_until_conflict, journal, p, conflicts)
        await wait_for_model(journal, 200)
        for i in range(50):
            await appender.append(f"e{i % 25}", i)
        await wait_for_model(journal, 250)
        with trio.fail_after(10):
            while not conflicts:  # noqa: ASYNC110 (the loser may not have been offered yet)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    [(_, conflict)] = conflicts
    assert (conflict.projection, conflict.slices) == (NAME, SliceRange.all())
    assert "stopped without writing" in str(conflict)
    await assert_model_is_the_fold(journal)  # every event applied once


@pytest.mark.parametrize("kind", ["exactly-once", "at-least-once"])
async def test_a_second_instance_over_an_overlapping_range_is_refused_at_start(
    journal: SqliteJournal, kind: str
) -> None:
    recorder = Recorder()
    handler: Handler[Any, Any] = (
        ExactlyOnce(apply_to_model) if kind == "exactly-once" else AtLeastOnce(recorder.handle)
    )
    p = projection(handler, source=QUIET)
    low, high = SliceRange(0, 511), SliceRange(512, 1023)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p, low)
        for refused in (SliceRange(256, 767), low, SliceRange.all(), SliceRange(511, 511)):
            with pytest.raises(ProjectionLeaseHeld) as held:
                await start(nursery, journal, p, refused)
            assert (held.value.projection, held.value.slices) == (NAME, refused)
            assert held.value.holder_slices == low
            assert 9 < held.value.expires_in <= 10
            assert f"holds the lease of slices {low}" in str(held.value)
        await start(nursery, journal, p, high)  # no overlap
        await start(nursery, journal, projection(handler, name="another"), low)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # a clean stop gave the leases up
        await start(nursery, journal, p)
        nursery.cancel_scope.cancel()


async def test_the_lease_is_renewed_while_running_and_a_lost_lease_stops_the_instance(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch, virtual_clock: trio.testing.MockClock
) -> None:
    store = SqliteOffsetStore(journal.database, clock=trio_clock())
    renewals: list[float] = []
    renew = SqliteOffsetStore.renew_lease
    failing = False

    async def recorded_renew(self: SqliteOffsetStore, lease: Lease, duration: float) -> Lease:
        renewals.append(trio.current_time())
        if failing:
            raise sqlite3.OperationalError("database is locked")
        return await renew(self, lease, duration)

    monkeypatch.setattr(SqliteOffsetStore, "renew_lease", recorded_renew)

    def expires_at(conn: sqlite3.Connection) -> list[tuple[str, float]]:
        return conn.execute("SELECT owner, expires_at FROM projection_lease").fetchall()

    appender = Appender(journal)
    p = projection(ExactlyOnce(apply_to_model), source=QUIET, lease_duration=3.0)
    conflicts: list[tuple[float, ProjectionConflict]] = []
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(serve_until_conflict, journal, p, conflicts, store)
        await trio.sleep(2.5)
        assert renewals == [exactly(t0 + 1), exactly(t0 + 2)]
        [(first_owner, expiry)] = await journal.database.read(expires_at)
        assert expiry == exactly(t0 + 2 + 3)
        # Its renewals fail from now on; the lease expires at t0 + 5 and is taken over.
        failing = True
        await trio.sleep(4.5 - 2.5)
        with pytest.raises(ProjectionLeaseHeld) as held:
            await nursery.start(serve_until_conflict, journal, p, conflicts, store)
        assert held.value.expires_in == exactly(0.5)
        await trio.sleep(0.51)
        await nursery.start(serve_until_conflict, journal, p, conflicts, store)
        [(second_owner, _)] = await journal.database.read(expires_at)
        assert second_owner != first_owner
        failing = False
        await trio.sleep(1.0)
        # The first instance's next renewal (t0 + 6) finds the lease lost: it stops.
        [(when, conflict)] = conflicts
        assert when == exactly(t0 + 6)
        assert "lost its lease" in str(conflict)
        await appender.append("a", 1, 2)
        await wait_for_model(journal, 2)
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


async def test_the_lease_of_a_killed_owner_is_taken_over_once_it_expires(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    store = SqliteOffsetStore(journal.database, clock=trio_clock())
    t0 = trio.current_time()
    # An owner that took the lease and never renewed it: a process killed with SIGKILL.
    await store.acquire_lease(NAME, ENTITY_TYPE, SliceRange.all(), owner="killed", duration=3.0)
    appender = Appender(journal)
    await appender.append("a", 1)
    p = projection(ExactlyOnce(apply_to_model), source=QUIET)
    conflicts: list[tuple[float, ProjectionConflict]] = []
    async with trio.open_nursery() as nursery:
        await trio.sleep(2.5)
        with pytest.raises(ProjectionLeaseHeld) as held:
            await nursery.start(serve_until_conflict, journal, p, conflicts, store)
        assert held.value.holder == "killed"
        assert held.value.expires_in == exactly(0.5)
        await trio.sleep(held.value.expires_in)
        assert trio.current_time() == exactly(t0 + 3.0)
        await nursery.start(serve_until_conflict, journal, p, conflicts, store)
        await wait_for_model(journal, 1)
        nursery.cancel_scope.cancel()
    assert conflicts == []
    assert set(await read_model(journal)) == {("Counter|a", 1)}


async def test_a_read_model_migration_longer_than_the_lease_keeps_the_lease(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    store = SqliteOffsetStore(journal.database, clock=trio_clock())
    token = trio.lowlevel.current_trio_token()

    def slow_migration(conn: sqlite3.Connection) -> None:
        trio.from_thread.run(trio.sleep, 7.0, trio_token=token)  # over twice the lease
        conn.execute("CREATE TABLE totals (pid TEXT PRIMARY KEY)")

    p = projection(
        ExactlyOnce(apply_to_model, migrations=[slow_migration]), source=QUIET, lease_duration=3.0
    )
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await start(nursery, journal, p, None, store)
        assert trio.current_time() == exactly(t0 + 7.0)
        # The renewal due during the migration ran right after it, from the time it ran.
        with pytest.raises(ProjectionLeaseHeld) as held:
            await store.acquire_lease(
                NAME, ENTITY_TYPE, SliceRange.all(), owner="rival", duration=3.0
            )
        assert held.value.expires_in == exactly(3.0)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("call", ["acquire", "renew"])
async def test_a_lease_write_that_waits_for_the_writer_still_gets_the_whole_duration(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock, call: str
) -> None:
    store = SqliteOffsetStore(journal.database, clock=trio_clock())
    token = trio.lowlevel.current_trio_token()
    lease = await store.acquire_lease(NAME, ENTITY_TYPE, SliceRange.all(), owner="me", duration=3)

    writing = trio.Event()

    def long_write(txn: Any) -> None:  # the lock held by another process, as the writer sees it
        trio.from_thread.run_sync(writing.set, trio_token=token)
        trio.from_thread.run(trio.sleep, 2.0, trio_token=token)

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        nursery.start_soon(journal.database.write, long_write)
        await writing.wait()  # the lease's write waits for the writer from now on
        if call == "acquire":
            lease = await store.acquire_lease(
                NAME, ENTITY_TYPE, SliceRange.all(), owner="me", duration=3
            )
        else:
            lease = await store.renew_lease(lease, 3)
    assert trio.current_time() == exactly(t0 + 2.0)
    assert lease.expires_at == exactly(t0 + 2.0 + 3)

    def expires_at(conn: sqlite3.Connection) -> float:
        return float(conn.execute("SELECT expires_at FROM projection_lease").fetchone()[0])

    assert await journal.database.read(expires_at) == exactly(t0 + 2.0 + 3)


@pytest.mark.parametrize("kind", ["exactly-once", "at-least-once"])
async def test_a_running_instance_stops_at_its_next_save_after_a_reset_and_keeps_it(
    journal: SqliteJournal, kind: str
) -> None:
    recorder = Recorder()
    handler: Handler[Any, Any] = (
        ExactlyOnce(apply_to_model)
        if kind == "exactly-once"
        else AtLeastOnce(recorder.handle, save_every=1)
    )
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    store = SqliteOffsetStore(journal.database)
    conflicts: list[tuple[float, ProjectionConflict]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_until_conflict, journal, projection(handler), conflicts)
        with trio.fail_after(10):
            await store.wait_until_caught_up(NAME)
        await store.reset(NAME)
        await appender.append("b", 3)  # new to the instance: its save inserts, nothing else
        with trio.fail_after(10):
            while not conflicts:  # noqa: ASYNC110 (the instance ends; nothing to wait on)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    [(_, conflict)] = conflicts
    assert "stopped without writing" in str(conflict)
    assert await store.offsets(NAME) == {}  # the reset stands
    assert await stored_seq_nr(journal, "Counter|b") == 0
