"""Group commit of the PostgreSQL journal's appends: the appends that arrive while the writers'
transactions are in flight go together into the next one.

A commit costs a WAL flush and a round trip whatever it holds, so one transaction per append
bounds the journal by the server's commit rate (~1,500-4,000/s here). Here each of `writers`
writer tasks takes every waiting append, runs them in one transaction
(`_batched_appends.commit_appends`) on the pool, answers them, and takes what arrived in the
meantime; an append wakes a parked writer, so one alone costs one task switch, as a call of
its own would. Each append is checked and answered on its own, so one entity's conflict fails
only its own append.

Order: one entity's appends commit in the order they were made; its later appends wait for
the next transaction (a batch holds at most one append per entity), so two appends of one
entity are never in flight at once.

Cancellation, as the SQLite writer's: an `append` cancelled while it waits to be taken did
nothing; once taken into a transaction it cannot be taken back (the statement is on its way
to the server), and the caller waits for the outcome and gets it (appends are short). The
entity runtime persists through `append_soon`, whose callback is always called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import outcome
import trio

from fluvial._wakeup import SingleWaiter
from fluvial.core.records import EventRecord
from fluvial.journal.api import JournalClosed
from fluvial.journal.postgres._batched_appends import commit_appends
from fluvial.journal.postgres._errors import PostgresOutcomeUnknown
from fluvial.journal.postgres._pool import ConnectionPool

log = logging.getLogger("fluvial.journal")

AppendDone = Callable[[outcome.Outcome[Sequence[EventRecord]]], None]


class _PendingAppend:
    """An append waiting for its commit, and who to tell: a parked task or a callback."""

    __slots__ = ("events", "on_done", "task")

    def __init__(
        self,
        events: Sequence[EventRecord],
        task: trio.lowlevel.Task | None,
        on_done: AppendDone | None,
    ) -> None:
        self.events = events
        self.task = task
        self.on_done = on_done


class GroupCommit:
    """The appends of one journal, committed in groups on `writers` transactions at a time.

    `floor()` is the lowest timestamp the next transaction may give; `stamped(events, first)`
    is what an append returns once stored from timestamp `first` on (it also moves the floor);
    `committed()` is called once per transaction that stored something (waking followers).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        name: str,
        writers: int,
        max_appends: int,
        floor: Callable[[], int],
        stamped: Callable[[Sequence[EventRecord], int], Sequence[EventRecord]],
        committed: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._name = name
        self._writers = writers
        self._max_appends = max_appends
        self._floor = floor
        self._stamped = stamped
        self._committed = committed
        self._waiting: list[_PendingAppend] = []
        self._in_flight: set[str] = set()  # the entities of the transactions in flight
        self._idle: list[SingleWaiter] = []  # the writers parked for want of work
        self._closing = False

    def _check_open(self) -> None:
        if self._closing:
            raise JournalClosed(f"on PostgreSQL (schema {self._name})")

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """Append one entity's checked, non-empty `events` in the next group commit; what
        `Journal.append` returns or raises. Cancelled before its transaction took it, it did
        nothing; after, the caller waits for the outcome (see the module)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        pending = _PendingAppend(events, trio.lowlevel.current_task(), None)
        self._enqueue(pending)

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            # Not taken yet: no transaction has seen it, so it can be taken back.
            for index, waiting in enumerate(self._waiting):
                if waiting is pending:
                    del self._waiting[index]
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        stored: Sequence[EventRecord] = await trio.lowlevel.wait_task_rescheduled(abort)
        return stored

    def append_soon(self, events: Sequence[EventRecord], on_done: AppendDone) -> None:
        """Like `append` without waiting: `on_done` gets the outcome (see `AppendSoon`)."""
        self._check_open()
        self._enqueue(_PendingAppend(events, None, on_done))

    def _enqueue(self, pending: _PendingAppend) -> None:
        self._waiting.append(pending)
        idle = self._idle
        while idle:  # wake one parked writer (one cancelled while parked is skipped)
            writer = idle.pop()
            if writer.waiting:
                writer.wake()
                return

    def _take(self) -> list[_PendingAppend]:
        """The next transaction's appends: those waiting, in order, at most `max_appends`, and
        at most one per entity, none of an entity whose append is in flight (a later append of
        an entity waits for the next transaction: it must see the earlier one committed)."""
        in_flight = self._in_flight
        taken: list[_PendingAppend] = []
        left: list[_PendingAppend] = []
        held: set[str] = set()  # entities with an append left waiting: the later ones wait too
        for pending in self._waiting:
            pid = pending.events[0].persistence_id
            if pid in in_flight or pid in held or len(taken) >= self._max_appends:
                held.add(pid)
                left.append(pending)
            else:
                in_flight.add(pid)
                taken.append(pending)
        self._waiting = left
        return taken

    async def serve(self, task_status: trio.TaskStatus[None]) -> None:
        """Run the writers until `close` was called and no append waits; fail those left
        (only if this is cancelled: a journal closed by an error) with JournalClosed."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._writers):
                    nursery.start_soon(self._write)
                task_status.started()
        finally:
            self._closing = True
            stranded, self._waiting = self._waiting, []
            for pending in stranded:
                self._answer(pending, outcome.Error(JournalClosed(f"on PostgreSQL ({self._name})")))

    def close(self) -> None:
        """Take no more appends; `serve` returns once the waiting ones are committed."""
        self._closing = True
        idle, self._idle = self._idle, []
        for writer in idle:
            writer.wake()

    async def _write(self) -> None:
        """One writer: commit what waits, answer its callers, again; park when nothing can go
        (an append wakes it)."""
        parked = SingleWaiter()
        while True:
            batch = self._take()
            if not batch:
                # Nothing waits, or only appends of entities in flight: the writer of those
                # takes them when its commit ends.
                if self._closing:
                    return
                self._idle.append(parked)
                await parked.wait()
                continue
            await self._commit(batch)

    async def _commit(self, batch: list[_PendingAppend]) -> None:
        try:
            # Shielded: once taken, a batch runs to its end and every caller is answered
            # (closing the journal waits for it).
            with trio.CancelScope(shield=True):
                appends = [pending.events for pending in batch]
                result = await outcome.acapture(
                    self._pool.run, _Transaction(appends, self._floor())
                )
                if isinstance(result, outcome.Error) and isinstance(
                    result.error, PostgresOutcomeUnknown
                ):
                    # The connection broke mid-commit: run it again, answering those that
                    # had committed by reading them back (never storing anything twice).
                    result = await outcome.acapture(
                        self._pool.run,
                        _Transaction(appends, self._floor(), read_back=True),
                        idempotent=True,
                    )
        finally:
            for pending in batch:
                self._in_flight.discard(pending.events[0].persistence_id)
        if isinstance(result, outcome.Error):
            # The transaction as a whole failed (the server unreachable for longer than the
            # pool retries): every append of the batch shares the error, PostgresUnavailable
            # (may have committed: the entity runtime reloads before its next command).
            for pending in batch:
                self._answer(pending, outcome.Error(result.error))  # an outcome is used once
            return
        stored_any = False
        for pending, first in zip(batch, result.unwrap(), strict=True):
            if isinstance(first, outcome.Value):
                stored_any = True
                self._answer(pending, outcome.Value(self._stamped(pending.events, first.value)))
            else:
                self._answer(pending, first)
        if stored_any:
            self._committed()

    def _answer(self, pending: _PendingAppend, result: outcome.Outcome[Any]) -> None:
        if pending.task is not None:
            trio.lowlevel.reschedule(pending.task, result)
            return
        assert pending.on_done is not None
        try:
            pending.on_done(result)
        except Exception:
            # A broken callback must not strand the other appends of the batch.
            log.exception("%s: an append's callback failed", self._name)


class _Transaction:
    """What the pool runs for one group commit."""

    __slots__ = ("appends", "floor", "read_back")

    def __init__(
        self, appends: list[Sequence[EventRecord]], floor: int, *, read_back: bool = False
    ) -> None:
        self.appends = appends
        self.floor = floor
        self.read_back = read_back

    def __call__(self, conn: Any) -> list[outcome.Outcome[int]]:
        return commit_appends(conn, self.appends, self.floor, read_back=self.read_back)
