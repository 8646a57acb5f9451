"""An at-least-once projection end to end on each journal (memory, SQLite, PostgreSQL in a
fresh schema of `test`) and its own offset store: events from the entity runtime and from
`journal.append`, a handler that fails once (the instance restarts from the stored offsets
and the events since come again), then a stop once caught up and a restart of the journal (as
of the process): every event is seen, and after the restart only the new ones come (the
stored offsets and seen entities resume it; backtracking, which runs often and starts behind
where the query resumes, brings the old ones again, to be dropped)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import attrs
import pytest
import trio

from fluvial import (
    AtLeastOnce,
    Backoff,
    Command,
    Effect,
    EventEnvelope,
    EventRecord,
    EventSourcedBehavior,
    PersistenceId,
    Projection,
    SerializerRegistry,
    SliceRange,
    SourceSettings,
    open_entities,
    serve_projection,
)
from fluvial.journal.postgres import PostgresJournal, open_postgres_journal
from fluvial.journal.sqlite import SqliteJournal, open_sqlite_journal
from fluvial.testing import MemoryJournal
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

TIMEOUT = 20.0
# Backtracking every 0.1 s: on every journal it delivers again what the query delivered.
SETTINGS = SourceSettings(backtracking_interval=0.1, backtracking_behind_current_time=0.2)
Journal = MemoryJournal | SqliteJournal | PostgresJournal
OpenJournal = Callable[[], AbstractAsyncContextManager[Journal]]


@attrs.frozen
class Deposit(Command[int]):
    amount: int


@attrs.frozen
class Deposited:
    amount: int


def _on_command(balance: int, command: Deposit) -> Effect[Deposited, int]:
    return Effect[Deposited, int].persist(Deposited(command.amount)).then_reply(command, int)


Account = EventSourcedBehavior[Deposit, Deposited, int](
    entity_type="Account",
    empty_state=0,
    command_handler=_on_command,
    event_handler=lambda balance, event: balance + event.amount,
)

REGISTRY = SerializerRegistry()
REGISTRY.register(Deposited, "account.Deposited")


def _deposited(account: str, seq_nr: int, amount: int) -> EventRecord:
    pid = PersistenceId("Account", account)
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=REGISTRY.encode(Deposited(amount)),
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def open_journal(request: pytest.FixtureRequest, tmp_path: Path) -> OpenJournal:
    """Opens the same journal each time (its data kept between openings)."""
    if request.param == "memory":
        journal = MemoryJournal()

        @contextlib.asynccontextmanager
        async def same_memory() -> AsyncIterator[Journal]:
            yield journal

        return same_memory
    if request.param == "sqlite":
        return lambda: open_sqlite_journal(tmp_path / "journal.db")
    schema = request.getfixturevalue("postgres_schema")  # skips (or fails in CI) without a server
    return lambda: open_postgres_journal(DSN, schema=schema, poll_interval=0.05)


class Audit:
    """What the handler saw, in order; it fails once on one event, after seeing it."""

    def __init__(self, fail_once_on: tuple[str, int]) -> None:
        self.seen: list[tuple[str, int]] = []
        self.fail_once_on: tuple[str, int] | None = fail_once_on

    async def record(self, envelope: EventEnvelope[Deposited]) -> None:
        key = (envelope.entity_id, envelope.seq_nr)
        self.seen.append(key)
        if key == self.fail_once_on:
            self.fail_once_on = None
            raise RuntimeError("the handler failed once")

    def projection(self) -> Projection[Deposited]:
        return Projection[Deposited](
            name="audit",
            entity_type="Account",
            # Saving after 100 or 0.2 s: the failure repeats what came since the last save.
            handler=AtLeastOnce(self.record, save_after=0.2),
            backoff=Backoff(min=0.01),
            source=SETTINGS,
        )


async def _run_until_caught_up(
    journal: Journal, audit: Audit, work: Callable[[], AbstractAsyncContextManager[None]]
) -> None:
    """Serve the projection, do `work`, wait until it has caught up, and stop it cleanly."""
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_projection, journal, REGISTRY, audit.projection())
        async with work():
            pass
        await journal.offset_store().wait_until_caught_up("audit")
        nursery.cancel_scope.cancel()


async def test_an_at_least_once_projection_sees_every_event_across_a_failure_and_a_restart(
    open_journal: OpenJournal,
) -> None:
    audit = Audit(fail_once_on=("bob", 2))
    first = [("alice", 1), ("alice", 2), ("bob", 1), ("bob", 2), ("bob", 3)]
    then = [("alice", 3), ("carol", 1)]
    with trio.fail_after(TIMEOUT):
        async with open_journal() as journal:

            @contextlib.asynccontextmanager
            async def deposits() -> AsyncIterator[None]:
                async with open_entities(journal, REGISTRY, [Account]) as entities:
                    assert await entities.ref(Account, "alice").ask(Deposit(10)) == 10
                    assert await entities.ref(Account, "alice").ask(Deposit(5)) == 15
                await journal.append([_deposited("bob", n, n) for n in (1, 2, 3)])
                yield

            await _run_until_caught_up(journal, audit, deposits)
        assert set(audit.seen) == set(first)
        # The failure restarted the instance from its stored offsets: bob 2 came again (and
        # whatever else followed the last save), each entity's events first seen in seq nr
        # order.
        assert audit.seen.count(("bob", 2)) >= 2
        for account in ("alice", "bob"):
            mine = [seq_nr for pid, seq_nr in audit.seen if pid == account]
            assert list(dict.fromkeys(mine)) == sorted(set(mine))
        before_restart = len(audit.seen)

        # The process restarts: the journal opened again, events appended while it was down.
        async with open_journal() as journal:
            await journal.append([_deposited("alice", 3, 100)])

        async with open_journal() as journal:

            @contextlib.asynccontextmanager
            async def more() -> AsyncIterator[None]:
                await journal.append([_deposited("carol", 1, 3)])
                yield

            await _run_until_caught_up(journal, audit, more)
            store = journal.offset_store()
            assert await store.backlog("audit", "Account", SliceRange.all()) == 0
    # Resumed from the stored offsets: nothing seen before the restart came again.
    assert sorted(audit.seen[before_restart:]) == then
