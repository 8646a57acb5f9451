"""A process that hosts one entity that another process hosts as well, on one PostgreSQL
journal.

Run by test_shared_entity_postgres_processes.py: `python shared_entity_process.py DSN SCHEMA
AMOUNT COUNT` opens the journal of SCHEMA and the entity `Tally|shared`, prints "ready",
waits for a line on its standard input, then asks COUNT `Deposit(AMOUNT)` commands one after
the other. A command answered with `JournalConflict` (the other process stored that seq nr
first) is asked again: the entity reloaded from the journal after the failed append. Prints
one JSON line: the replies (each the entity's state after the command: balance and number of
events) and the number of conflicts.
"""

from __future__ import annotations

import json
import sys

import attrs
import trio

from fluvial import (
    Command,
    Effect,
    EventSourcedBehavior,
    JournalConflict,
    SerializerRegistry,
    open_entities,
)
from fluvial.journal.postgres import open_postgres_journal

ENTITY_ID = "shared"
State = tuple[int, int]  # balance, number of events applied


@attrs.frozen
class Deposit(Command[State]):
    amount: int


@attrs.frozen
class Deposited:
    amount: int


def _on_command(state: State, command: Deposit) -> Effect[Deposited, State]:
    return (
        Effect[Deposited, State]
        .persist(Deposited(command.amount))
        .then_reply(command, lambda after: after)
    )


def _on_event(state: State, event: Deposited) -> State:
    return (state[0] + event.amount, state[1] + 1)


Tally = EventSourcedBehavior[Deposit, Deposited, State](
    entity_type="Tally",
    empty_state=(0, 0),
    command_handler=_on_command,
    event_handler=_on_event,
)

REGISTRY = SerializerRegistry()
REGISTRY.register(Deposited, "tally.Deposited")


async def main(dsn: str, schema: str, amount: int, count: int) -> None:
    replies: list[State] = []
    conflicts = 0
    async with (
        open_postgres_journal(dsn, schema=schema) as journal,
        open_entities(journal, REGISTRY, [Tally]) as entities,
    ):
        ref = entities.ref(Tally, ENTITY_ID)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        for _ in range(count):
            while True:
                try:
                    replies.append(await ref.ask(Deposit(amount)))
                    break
                except JournalConflict:
                    conflicts += 1
    print(json.dumps({"replies": replies, "conflicts": conflicts}), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
