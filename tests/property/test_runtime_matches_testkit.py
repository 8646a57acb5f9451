"""The entity runtime is the test kit run sequentially: N concurrent asks to one entity give the
same events, states and replies as `BehaviorTestKit` given the same commands one at a time, in
the order the runtime took them. On the memory journal and on a real SQLite file.

The order the runtime took the commands in is read from what it did, without a hook in it: a
command that persisted is placed by the seq nr of its events in the journal, one that did not
by the state its reply (or its refusal) reveals it saw. Commands whose outcome cannot depend on
the state (a handler that always raises, one that is never handled) can go anywhere, and go
last. Any order that explains every outcome proves the runtime's batches, speculative states,
restarts after a stop and replies behave as one command after the other.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, assert_never

import attrs
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fluvial import (
    Command,
    CommandRejected,
    Effect,
    EventSourcedBehavior,
    SerializerRegistry,
    open_entities,
    open_sqlite_journal,
)
from fluvial.journal.api import MAX_SEQ_NR, Journal
from fluvial.testing import BehaviorTestKit, CommandResult, MemoryJournal

CAP = 6  # a `Capped` command is refused once the ledger holds this many entries
Ledger = tuple[str, ...]


@attrs.frozen
class Add(Command[Ledger]):
    """Persist `count` entries (atomically); reply with the ledger after them."""

    tag: str
    count: int


@attrs.frozen
class Capped(Command[Ledger]):
    """Persist one entry, or be refused with `Full` (which says the length seen) at `CAP`."""

    tag: str


@attrs.frozen
class Read(Command[Ledger]):
    """Reply with the ledger."""


@attrs.frozen
class Halt(Command[Ledger]):
    """Reply with the ledger, then stop: the commands after it go to the next incarnation."""


@attrs.frozen
class AddThenStop(Command[Ledger]):
    """Persist one entry, reply, then stop."""

    tag: str


@attrs.frozen
class Forget(Command[Ledger]):
    """Persist one entry and forget to reply: `MissingReply`."""

    tag: str


@attrs.frozen
class BadReply(Command[Ledger]):
    """Persist one entry, then the reply function raises: `CommandFailed` after persisting."""

    tag: str


@attrs.frozen
class Crash(Command[Ledger]):
    """The handler always raises: `CommandFailed`, whatever the state."""


@attrs.frozen
class Ignore(Command[Ledger]):
    """Never handled: `UnhandledCommand`, whatever the state."""


LedgerCommand = Add | Capped | Read | Halt | AddThenStop | Forget | BadReply | Crash | Ignore


@attrs.frozen
class Entered:
    entry: str


class Full(CommandRejected):
    """The ledger is full."""


LedgerEffect = Effect[Entered, Ledger]


def _a_failing_reply(ledger: Ledger) -> Ledger:
    raise IndexError(f"no entry {len(ledger)}")


def handle(state: Ledger, command: LedgerCommand) -> LedgerEffect:
    match command:
        case Add(tag, count):
            entries = (Entered(f"{tag}.{i}") for i in range(count))
            return LedgerEffect.persist_all(entries).then_reply(command, lambda s: s)
        case Capped(tag):
            if len(state) >= CAP:
                return LedgerEffect.reject(command, Full(f"full at {len(state)}"))
            return LedgerEffect.persist(Entered(tag)).then_reply(command, lambda s: s)
        case Read():
            return LedgerEffect.reply(command, state)
        case Halt():
            return LedgerEffect.stop().then_reply(command, lambda s: s)
        case AddThenStop(tag):
            return LedgerEffect.persist(Entered(tag)).then_reply(command, lambda s: s).then_stop()
        case Forget(tag):
            return LedgerEffect.persist(Entered(tag))
        case BadReply(tag):
            return LedgerEffect.persist(Entered(tag)).then_reply(command, _a_failing_reply)
        case Crash():
            raise RuntimeError("a bug, whatever the state")
        case Ignore():
            return LedgerEffect.unhandled()
        case _:
            assert_never(command)


def enter(state: Ledger, event: Entered) -> Ledger:
    return (*state, event.entry)


LedgerBehavior = EventSourcedBehavior[LedgerCommand, Entered, Ledger](
    entity_type="Ledger", empty_state=(), command_handler=handle, event_handler=enter
)
REGISTRY = SerializerRegistry()
REGISTRY.register(Entered, "ledger.Entered")


def commands_with_tags(kinds: list[str]) -> list[LedgerCommand]:
    """One command per kind; each persisting one has its own tag (its index)."""
    made: list[LedgerCommand] = []
    for index, kind in enumerate(kinds):
        tag = f"c{index}"
        choices: dict[str, LedgerCommand] = {
            "add": Add(tag, 1),
            "add3": Add(tag, 3),
            "capped": Capped(tag),
            "read": Read(),
            "halt": Halt(),
            "add-then-stop": AddThenStop(tag),
            "forget": Forget(tag),
            "bad-reply": BadReply(tag),
            "crash": Crash(),
            "ignore": Ignore(),
        }
        made.append(choices[kind])
    return made


KINDS = ["add", "add3", "capped", "read", "halt", "add-then-stop", "forget", "bad-reply"]
command_lists = st.lists(st.sampled_from([*KINDS, "crash", "ignore"]), min_size=1, max_size=16)


def outcome(reply: object, error: BaseException | None) -> tuple[object, ...]:
    """What a caller sees: the reply, or the error's class and message (one set of messages)."""
    if error is None:
        return ("reply", reply)
    return ("error", type(error).__name__, str(error))


@attrs.frozen
class RuntimeRun:
    outcomes: list[tuple[object, ...]]
    events: list[Entered]
    final_state: Ledger
    appends: int


class CountingJournal(MemoryJournal):
    """A memory journal that counts appends (to show commands did share batches)."""

    appends = 0

    async def append(self, events: Any) -> Any:
        self.appends += 1
        return await super().append(events)


@asynccontextmanager
async def open_journal(kind: str, directory: Path) -> AsyncIterator[Journal]:
    if kind == "memory":
        yield CountingJournal()
    else:
        async with open_sqlite_journal(directory / "ledger.db") as journal:
            yield journal


async def run_concurrently(
    kind: str, directory: Path, commands: list[LedgerCommand], mailbox_size: int
) -> RuntimeRun:
    outcomes: list[tuple[object, ...]] = [()] * len(commands)
    async with (
        open_journal(kind, directory) as journal,
        open_entities(journal, REGISTRY, [LedgerBehavior], mailbox_size=mailbox_size) as entities,
    ):
        ledger = entities.ref(LedgerBehavior, "e")

        async def ask(index: int, command: LedgerCommand) -> None:
            try:
                outcomes[index] = outcome(await ledger.ask(command), None)
            except Exception as exc:
                outcomes[index] = outcome(None, exc)

        async with trio.open_nursery() as nursery:
            for index, command in enumerate(commands):
                nursery.start_soon(ask, index, command)
        final_state = await ledger.ask(Read())
        records = await journal.read_events("Ledger|e", 1, MAX_SEQ_NR, 10_000)
        appends = journal.appends if isinstance(journal, CountingJournal) else -1
    events = [
        REGISTRY.decode(r.payload, persistence_id="Ledger|e", seq_nr=r.seq_nr)
        for r in records
        if r.payload is not None
    ]
    return RuntimeRun(outcomes, events, final_state, appends)


def taken_order(commands: list[LedgerCommand], run: RuntimeRun) -> list[int]:
    """The indexes of `commands` in an order the runtime's outcomes say it took them in."""
    first_seq_nr: dict[str, int] = {}
    for seq_nr, event in enumerate(run.events, start=1):
        first_seq_nr.setdefault(event.entry.partition(".")[0], seq_nr)

    def key(index: int) -> tuple[float, int]:
        command, result = commands[index], run.outcomes[index]
        tag = getattr(command, "tag", None)
        if tag is not None and tag in first_seq_nr:
            return (first_seq_nr[tag] - 1, 1)  # it saw the ledger before its first entry
        if result[0] == "reply":
            seen = result[1]
            assert isinstance(seen, tuple)
            return (len(seen), 0)  # before the command that persisted on top of what it saw
        if isinstance(command, Capped):
            assert result[1] == "Full"
            return (int(str(result[2]).rpartition(" ")[2]), 0)
        return (math.inf, 0)  # its outcome does not depend on the state: anywhere will do

    return sorted(range(len(commands)), key=key)


def run_sequentially(
    commands: list[LedgerCommand], order: list[int]
) -> dict[int, CommandResult[Entered, Ledger, Ledger]]:
    kit = BehaviorTestKit(LedgerBehavior, REGISTRY, entity_id="e")
    results: dict[int, CommandResult[Entered, Ledger, Ledger]] = {}
    for index in order:
        results[index] = kit.run_command(commands[index])
    results[-1] = kit.run_command(Read())
    assert kit.restart() == results[-1].state
    return results


def check_runtime_is_the_kit_in_order(kind: str, kinds: list[str], mailbox_size: int) -> int:
    commands = commands_with_tags(kinds)
    with tempfile.TemporaryDirectory() as directory:
        run = trio.run(run_concurrently, kind, Path(directory), commands, mailbox_size)
    order = taken_order(commands, run)
    results = run_sequentially(commands, order)
    assert [outcome(results[i].reply, results[i].error) for i in range(len(commands))] == (
        run.outcomes
    )
    kit_events = [event for index in order for event in results[index].events]
    assert kit_events == run.events
    assert results[-1].state == run.final_state == tuple(e.entry for e in run.events)
    return run.appends


@settings(max_examples=100, deadline=None)
@given(kinds=command_lists, mailbox_size=st.integers(1, 8))
def test_concurrent_asks_on_the_memory_journal_are_the_kit_run_in_order(
    kinds: list[str], mailbox_size: int
) -> None:
    check_runtime_is_the_kit_in_order("memory", kinds, mailbox_size)


@settings(max_examples=25, deadline=None)
@given(kinds=command_lists, mailbox_size=st.integers(1, 8))
def test_concurrent_asks_on_a_sqlite_file_are_the_kit_run_in_order(
    kinds: list[str], mailbox_size: int
) -> None:
    check_runtime_is_the_kit_in_order("sqlite", kinds, mailbox_size)


def test_the_concurrent_asks_do_share_batches() -> None:
    # Without batches, the properties above would only test one command at a time.
    appends = check_runtime_is_the_kit_in_order("memory", ["add"] * 12, mailbox_size=64)
    assert appends < 12
