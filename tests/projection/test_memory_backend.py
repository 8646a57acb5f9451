"""A projection over the memory journal and its memory offset store, end to end: events from
the entity runtime and from `journal.append`, an exactly-once read model written through
`MemoryTransaction` (applied once, also across a restart and a failed attempt), and an
at-least-once handler. No file anywhere."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

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
    ExactlyOnce,
    MemoryTransaction,
    PersistenceId,
    Projection,
    RecoveryStrategy,
    SerializerRegistry,
    SliceRange,
    SourceSettings,
    open_entities,
    serve_projection,
)
from fluvial.testing import MemoryJournal

TIMEOUT = 10.0
QUIET = SourceSettings(backtracking_interval=None)


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


class Balances:
    """An exactly-once read model in memory: balances per account, and every event applied
    (to tell an event applied twice). A handler may fail once on one event, after it
    registered its write: that write must not be applied."""

    def __init__(self, fail_once_on: tuple[str, int] | None = None) -> None:
        self.balances: Counter[str] = Counter()
        self.applied: list[tuple[str, int]] = []
        self.tables_created = 0
        self.fail_once_on = fail_once_on

    def create_tables(self, txn: MemoryTransaction) -> None:
        def create() -> None:
            self.tables_created += 1

        txn.on_commit(create)

    def handle(self, txn: MemoryTransaction, envelope: EventEnvelope[Deposited]) -> None:
        key = (envelope.entity_id, envelope.seq_nr)

        def apply() -> None:
            self.balances[envelope.entity_id] += envelope.event.amount
            self.applied.append(key)

        txn.on_commit(apply)
        if key == self.fail_once_on:
            self.fail_once_on = None
            raise RuntimeError("the handler failed after registering its write")

    def projection(self) -> Projection[Deposited, MemoryTransaction]:
        return Projection(
            name="balances",
            entity_type="Account",
            handler=ExactlyOnce(self.handle, migrations=[self.create_tables]),
            recovery=RecoveryStrategy.retry_and_fail(1),
            backoff=Backoff(min=0.01),
            source=QUIET,
        )


def _deposited(account: str, seq_nr: int, amount: int) -> EventRecord:
    pid = PersistenceId("Account", account)
    payload = REGISTRY.encode(Deposited(amount))
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=payload,
    )


@pytest.fixture
def journal() -> Iterator[MemoryJournal]:
    yield MemoryJournal()


async def _serve(
    nursery: trio.Nursery,
    journal: MemoryJournal,
    projection: Projection[Deposited, MemoryTransaction],
) -> trio.CancelScope:
    """Start `projection` with the journal's own offset store; cancel the scope to stop it."""

    async def run(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        async with trio.open_nursery() as own:
            await own.start(serve_projection, journal, REGISTRY, projection)
            task_status.started(own.cancel_scope)

    scope: trio.CancelScope = await nursery.start(run)
    return scope


async def test_an_exactly_once_projection_applies_every_event_once_across_restarts(
    journal: MemoryJournal,
) -> None:
    model = Balances(fail_once_on=("bob", 2))
    store = journal.offset_store()
    async with (
        trio.open_nursery() as nursery,
        open_entities(journal, REGISTRY, [Account]) as entities,
    ):
        running = await _serve(nursery, journal, model.projection())
        assert await entities.ref(Account, "alice").ask(Deposit(10)) == 10
        assert await entities.ref(Account, "alice").ask(Deposit(5)) == 15
        await journal.append([_deposited("bob", 1, 7), _deposited("bob", 2, 1)])
        with trio.fail_after(TIMEOUT):
            await store.wait_until_caught_up("balances")
        assert model.balances == {"alice": 15, "bob": 8}

        running.cancel()  # a restart: the offsets and the read model stay in memory
        await entities.ref(Account, "alice").ask(Deposit(100))
        await _serve(nursery, journal, model.projection())
        await journal.append([_deposited("bob", 3, 2)])
        with trio.fail_after(TIMEOUT):
            await store.wait_until_caught_up("balances")
        nursery.cancel_scope.cancel()

    assert model.balances == {"alice": 115, "bob": 10}
    assert sorted(model.applied) == [
        ("alice", 1),
        ("alice", 2),
        ("alice", 3),
        *[("bob", n) for n in (1, 2, 3)],
    ]
    assert model.tables_created == 1  # the migration ran once, not at the restart
    assert await store.backlog("balances", "Account", SliceRange.all()) == 0


async def test_an_at_least_once_projection_sees_every_event(journal: MemoryJournal) -> None:
    seen: list[tuple[str, int]] = []

    async def record(envelope: EventEnvelope[Deposited]) -> None:
        seen.append((envelope.entity_id, envelope.seq_nr))

    projection = Projection[Deposited](
        name="audit", entity_type="Account", handler=AtLeastOnce(record, save_every=1), source=QUIET
    )
    async with trio.open_nursery() as nursery:
        await _serve(nursery, journal, projection)
        await journal.append([_deposited("carol", 1, 3), _deposited("carol", 2, 4)])
        await journal.append([_deposited("dave", 1, 1)])
        with trio.fail_after(TIMEOUT):
            await journal.offset_store().wait_until_caught_up("audit")
        nursery.cancel_scope.cancel()
    assert seen == [("carol", 1), ("carol", 2), ("dave", 1)]
