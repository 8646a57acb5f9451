"""The SQLite writer under faults and misuse: nothing hangs, and a failing write takes nothing
innocent with it.

A hang here would be the bug itself: every test bounds its time, and a write that ignored
cancellation would still be caught by pytest's timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import outcome
import pytest
import trio
import trio.testing

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.core.ids import PersistenceId, SliceRange  # noqa: E402
from fluvial.core.offsets import TimestampOffset  # noqa: E402
from fluvial.core.records import EventRecord  # noqa: E402
from fluvial.journal.api import JournalClosed, JournalConflict  # noqa: E402
from fluvial.journal.sqlite import _database as sqlite_database  # noqa: E402
from fluvial.journal.sqlite._errors import JournalFileError  # noqa: E402
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal  # noqa: E402
from fluvial.journal.sqlite._transaction import WriterState, WriteTransaction  # noqa: E402
from fluvial.testing.journal_contract import (  # noqa: E402
    entity_ids,
    events,
    read_all,
    snapshot,
)

ENTITY_TYPE = "Faults"
ALL = SliceRange.all()


async def _append_unbindable(journal: SqliteJournal, pid: PersistenceId) -> object:
    # SQLite's integers have 64 bits: binding this slice raises OverflowError (not a sqlite3
    # error) inside the writer's executemany, among the rows of the other appends.
    (first,) = events(pid, 1, 1)
    return await journal.append([msgspec.structs.replace(first, slice=2**64)])


async def _write_out_of_memory(journal: SqliteJournal, _pid: PersistenceId) -> object:
    def write(txn: WriteTransaction) -> None:
        txn.connection.execute("DELETE FROM snapshot")  # undone with the failing write
        raise MemoryError

    return await journal.database.write(write)


@pytest.mark.parametrize(
    ("failing_write", "expected"),
    [(_append_unbindable, JournalFileError), (_write_out_of_memory, MemoryError)],
    ids=["unbindable-row", "memory-error"],
)
async def test_a_write_failing_with_a_non_sqlite_error_fails_alone_and_the_journal_closes(
    tmp_path: Path,
    failing_write: Callable[[SqliteJournal, PersistenceId], Awaitable[object]],
    expected: type[BaseException],
) -> None:
    victim, *others = entity_ids(ENTITY_TYPE, ALL, 9)
    results: dict[PersistenceId, outcome.Outcome[Any]] = {}

    async def run(pid: PersistenceId, write: Callable[[], Awaitable[object]]) -> None:
        results[pid] = await outcome.acapture(write)

    with trio.fail_after(10):
        async with open_sqlite_journal(tmp_path / "journal.db") as journal:
            await journal.save_snapshot(snapshot(others[0], 1), keep=1)
            # One scheduler turn: the writer gets them as one batch, the failing one amid
            # appends of innocent entities.
            async with trio.open_nursery() as nursery:
                for pid in others[:4]:
                    nursery.start_soon(run, pid, lambda pid=pid: journal.append(events(pid, 1, 2)))
                nursery.start_soon(run, victim, lambda: failing_write(journal, victim))
                for pid in others[4:]:
                    nursery.start_soon(run, pid, lambda pid=pid: journal.append(events(pid, 1, 2)))

            failed = results.pop(victim)
            assert isinstance(failed, outcome.Error)
            assert isinstance(failed.error, expected)
            if isinstance(failed.error, JournalFileError):
                assert str(tmp_path / "journal.db") in str(failed.error)
                assert "nothing of this write was stored" in str(failed.error)
            for pid, result in results.items():
                assert await read_all(journal, pid) == list(result.unwrap())
            assert await journal.highest_seq_nr(str(victim)) == 0
            assert await journal.load_snapshot(str(others[0])) is not None
            # The writer goes on.
            stored = await journal.append(events(victim, 1, 1))
            assert await read_all(journal, victim) == list(stored)


async def test_every_call_after_close_raises_journal_closed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    async with open_sqlite_journal(path) as journal:
        stored = await journal.append(events(pid, 1, 1))

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: journal.append(events(pid, 2, 1)),
        lambda: journal.read_events(str(pid), 1, 10, 10),
        lambda: journal.highest_seq_nr(str(pid)),
        lambda: journal.read_events_by_slices(ENTITY_TYPE, ALL, TimestampOffset.start(), 10),
        lambda: journal.save_snapshot(snapshot(pid, 1), keep=1),
        lambda: journal.load_snapshot(str(pid)),
        lambda: journal.database.write(lambda txn: None),
        lambda: journal.database.read(lambda conn: None),
    ]
    answers: list[outcome.Outcome[Sequence[EventRecord]]] = []
    written: list[outcome.Outcome[None]] = []
    with trio.fail_after(5):
        for call in calls:
            with pytest.raises(JournalClosed) as closed:
                await call()
            assert str(path) in str(closed.value)
        with pytest.raises(JournalClosed):
            journal.append_soon(events(pid, 2, 1), answers.append)
        with pytest.raises(JournalClosed):
            journal.database.write_soon(lambda txn: None, written.append)
    assert answers == []
    assert written == []
    async with open_sqlite_journal(path) as reopened:
        assert await read_all(reopened, pid) == list(stored)


class _CancelWhenParked(trio.abc.Instrument):
    """Cancels `scope` as soon as `task` parks: within the scheduler's turn, so before the
    journal hands the turn's writes to its writer thread."""

    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope) -> None:
        self._task = task
        self._scope = scope

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self._task:
            self._scope.cancel()


async def test_a_write_cancelled_while_it_waits_in_the_outbox_did_nothing(
    tmp_path: Path,
) -> None:
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        commits_before = journal.database.commit_count()
        with trio.CancelScope() as scope:
            instrument = _CancelWhenParked(trio.lowlevel.current_task(), scope)
            trio.lowlevel.add_instrument(instrument)
            try:
                await journal.append(events(pid, 1, 1))
            finally:
                trio.lowlevel.remove_instrument(instrument)
        assert scope.cancelled_caught
        with trio.fail_after(5):
            assert await journal.highest_seq_nr(str(pid)) == 0
            assert journal.database.commit_count() == commits_before
            # The entity starts at seq nr 1: the cancelled append left no trace.
            stored = await journal.append(events(pid, 1, 1))
            assert await read_all(journal, pid) == list(stored)


class _ReadModelWrite:
    """A projection-style function write: one row into a read-model table, counted per run."""

    def __init__(self, *, fails: bool) -> None:
        self.fails = fails
        self.runs = 0

    def __call__(self, txn: WriteTransaction) -> str:
        self.runs += 1
        txn.connection.execute("INSERT INTO read_model (run) VALUES (?)", (self.runs,))
        if self.fails:
            raise ValueError("the handler failed")
        return "written"


@pytest.mark.parametrize(
    "order",
    [
        ["function", "conflict"],
        ["append", "function", "conflict"],
        ["conflict", "function", "append"],
        ["append", "conflict", "function"],
        ["failing-function", "append"],
        ["failing-function", "conflict"],
    ],
    ids="-".join,
)
async def test_a_function_write_runs_once_when_another_write_of_its_transaction_fails(
    tmp_path: Path, order: list[str]
) -> None:
    """A rollback of the shared transaction must not run a function write again: an
    exactly-once handler, a read-model migration or a reset clearing a read model would
    run twice."""
    victim, innocent = entity_ids(ENTITY_TYPE, ALL, 2)
    function = _ReadModelWrite(fails=order[0] == "failing-function")
    entered, release = threading.Event(), threading.Event()

    def hold_the_writer(_txn: WriteTransaction) -> None:
        entered.set()
        release.wait(10)

    writes: dict[str, Callable[[], Awaitable[object]]] = {
        "function": lambda: journal.database.write(function),
        "failing-function": lambda: journal.database.write(function),
        "append": lambda: journal.append(events(innocent, 1, 2)),
        "conflict": lambda: journal.append(events(victim, 1, 1)),
    }
    results: dict[str, outcome.Outcome[Any]] = {}

    async def run(name: str) -> None:
        results[name] = await outcome.acapture(writes[name])

    with trio.fail_after(10):
        async with open_sqlite_journal(tmp_path / "journal.db") as journal:
            await journal.database.write(
                lambda txn: txn.connection.execute("CREATE TABLE read_model (run INTEGER)")
            )
            await journal.append(events(victim, 1, 1))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(journal.database.write, hold_the_writer)
                await trio.to_thread.run_sync(entered.wait)
                for name in order:  # one by one: the next transaction holds them in this order
                    nursery.start_soon(run, name)
                    await trio.testing.wait_all_tasks_blocked()
                release.set()

            assert function.runs == 1
            stored = await journal.database.read(
                lambda conn: conn.execute("SELECT run FROM read_model").fetchall()
            )
            if function.fails:
                failed = results.pop("failing-function")
                assert isinstance(failed, outcome.Error)
                assert isinstance(failed.error, ValueError)
                assert stored == []
            else:
                assert results.pop("function").unwrap() == "written"
                assert stored == [(1,)]
            if "conflict" in results:
                conflict = results.pop("conflict")
                assert isinstance(conflict, outcome.Error)
                assert isinstance(conflict.error, JournalConflict)
            if "append" in results:
                assert await read_all(journal, innocent) == list(results.pop("append").unwrap())
            assert [r.seq_nr for r in await read_all(journal, victim)] == [1]


class _FailOnce:
    """`step`, but raising RuntimeError at its first call once armed, before it runs or
    `after` it (`replacement` stands in for it, a plain function, so that it binds as a
    method too)."""

    def __init__(self, step: Callable[..., Any], *, after: bool = False) -> None:
        self.armed = False

        def replacement(*args: Any) -> Any:
            if not self.armed:
                return step(*args)
            self.armed = False
            if after:
                step(*args)
            raise RuntimeError("a bug in the writer")

        self.replacement = replacement


async def test_a_transaction_failing_outside_its_writes_fails_its_batch_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the writer's own steps (here, beginning the transaction) fails the writes of
    that transaction with a typed error, not the writer thread."""
    path = tmp_path / "journal.db"
    pids = entity_ids(ENTITY_TYPE, ALL, 3)
    begin = _FailOnce(WriterState.begin)
    monkeypatch.setattr(WriterState, "begin", begin.replacement)
    results: dict[PersistenceId, outcome.Outcome[Any]] = {}

    async def append(pid: PersistenceId) -> None:
        results[pid] = await outcome.acapture(journal.append, events(pid, 1, 1))

    with trio.fail_after(10):
        async with open_sqlite_journal(path) as journal:
            begin.armed = True
            async with trio.open_nursery() as nursery:
                for pid in pids:
                    nursery.start_soon(append, pid)
            for pid in pids:
                failed = results[pid]
                assert isinstance(failed, outcome.Error)
                assert isinstance(failed.error, JournalFileError)
                assert str(path) in str(failed.error)
                assert "RuntimeError" in str(failed.error)
                assert await journal.highest_seq_nr(str(pid)) == 0
            stored = await journal.append(events(pids[0], 1, 1))
            assert await read_all(journal, pids[0]) == list(stored)


@pytest.mark.timeout(30)  # without the fix the callers ignore cancellation: they hang
@pytest.mark.parametrize("step", ["pages_written", "commit_batch"])
async def test_a_writer_thread_that_dies_fails_every_waiting_write_and_the_journal_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The writer thread dying (a bug in counting the pages a transaction wrote, between
    transactions; or in committing one, which it then holds) strands no caller: each write it
    will never confirm fails with a typed error naming the file and the cause, later calls fail
    at once, and the journal closes."""
    path = tmp_path / "journal.db"
    held, *queued = entity_ids(ENTITY_TYPE, ALL, 4)
    failing = _FailOnce(getattr(sqlite_database, step), after=True)
    monkeypatch.setattr(sqlite_database, step, failing.replacement)
    entered, release = threading.Event(), threading.Event()
    results: dict[PersistenceId, outcome.Outcome[Any]] = {}

    def hold_the_writer(txn: WriteTransaction) -> None:
        entered.set()
        release.wait(10)

    async def append(pid: PersistenceId) -> None:
        results[pid] = await outcome.acapture(journal.append, events(pid, 1, 1))

    def assert_fails_for_the_writer(error: BaseException) -> None:
        assert isinstance(error, JournalFileError), repr(error)
        assert str(path) in str(error)
        assert isinstance(error.__cause__, RuntimeError)

    async def hold() -> None:
        results[held] = await outcome.acapture(journal.database.write, hold_the_writer)

    with trio.fail_after(10):
        async with open_sqlite_journal(path) as journal:
            failing.armed = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold)
                await trio.to_thread.run_sync(entered.wait)
                # Queued behind the held transaction; the writer dies right after it.
                for pid in queued:
                    nursery.start_soon(append, pid)
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            if step == "commit_batch":
                queued.append(held)  # the batch the writer held is not confirmed either
            else:
                assert results.pop(held).unwrap() is None
            for pid in queued:
                failed = results[pid]
                assert isinstance(failed, outcome.Error)
                assert_fails_for_the_writer(failed.error)
            with pytest.raises(JournalFileError) as later:
                await journal.append(events(held, 1, 1))
            assert_fails_for_the_writer(later.value)
            with pytest.raises(JournalFileError) as later:
                journal.append_soon(events(held, 1, 1), lambda _: None)
            assert_fails_for_the_writer(later.value)
    async with open_sqlite_journal(path) as reopened:
        for pid in queued:
            assert await reopened.highest_seq_nr(str(pid)) == 0
