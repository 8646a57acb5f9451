"""What the entity runtime tests share: a notebook entity with every kind of effect, and
journals that outlive a runtime or hold its appends at a gate.

Tests that need to hold the runtime at a point (a write in flight, a full mailbox) use a memory
journal whose appends wait for a gate (`GatedJournal`), and `trio.testing.wait_all_tasks_blocked`
to know that everything has reached that point; those never touch SQLite, whose writes run in a
thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, assert_never

import attrs
import trio
import trio.testing

from fluvial.core.behavior import Command, Effect, EventSourcedBehavior, SnapshotPolicy
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.examples.shopping_cart import ShoppingCart, register_cart
from fluvial.journal.api import MAX_SEQ_NR, Journal
from fluvial.journal.sqlite_journal import SqliteJournal, open_sqlite_journal
from fluvial.testing import MemoryJournal


@attrs.frozen
class Note(Command[tuple[str, ...]]):
    """Persist one `Noted` per text (atomically), then reply with all texts."""

    texts: tuple[str, ...]


@attrs.frozen
class Read(Command[tuple[str, ...]]):
    pass


@attrs.frozen
class Crash(Command[None]):
    """The command handler raises."""


@attrs.frozen
class Ignore(Command[None]):
    """Effect.unhandled()."""


@attrs.frozen
class Forget(Command[None]):
    """Persist, but forget to reply."""


@attrs.frozen
class BadReply(Command[int]):
    """Persist, then raise while computing the reply."""


@attrs.frozen
class Halt(Command[str]):
    """Effect.stop(), with a reply; with `last_words`, persist them first."""

    last_words: str | None = None


NotesCommand = Note | Read | Crash | Ignore | Forget | BadReply | Halt


@attrs.frozen
class Noted:
    text: str


@attrs.frozen
class Notes:
    texts: tuple[str, ...] = ()


NotesEffect = Effect[Noted, Notes]


def notes_command(state: Notes, command: NotesCommand) -> NotesEffect:
    match command:
        case Note(texts):
            return NotesEffect.persist_all(Noted(t) for t in texts).then_reply(
                command, lambda s: s.texts
            )
        case Read():
            return NotesEffect.reply(command, state.texts)
        case Crash():
            raise RuntimeError("bug in the command handler")
        case Ignore():
            return NotesEffect.unhandled()
        case Forget():
            return NotesEffect.persist(Noted("forgotten"))
        case BadReply():
            return NotesEffect.persist(Noted("bad reply")).then_reply(command, lambda s: 1 // 0)
        case Halt(last_words):
            if last_words is None:
                return NotesEffect.stop().then_reply(command, lambda s: "halted")
            return (
                NotesEffect.persist(Noted(last_words))
                .then_reply(command, lambda s: "halted")
                .then_stop()
            )
        case _:
            assert_never(command)


def notes_event(state: Notes, event: Noted) -> Notes:
    if event.text == "boom":
        raise ValueError("bug in the event handler")
    return Notes((*state.texts, event.text))


Notebook = EventSourcedBehavior[NotesCommand, Noted, Notes](
    entity_type="Notebook",
    empty_state=Notes(),
    command_handler=notes_command,
    event_handler=notes_event,
    command_types=(Note, Read, Crash, Ignore, Forget, BadReply, Halt),
)

REGISTRY = register_cart(SerializerRegistry())
REGISTRY.register(Noted, "notes.Noted")
REGISTRY.register(Notes, "notes.Notes")


class GatedJournal(MemoryJournal):
    """A memory journal whose appends can be held at a gate, and which counts recoveries."""

    def __init__(self) -> None:
        super().__init__()
        self._gate: trio.Event | None = None
        self._held_pids: set[str] | None = None
        self.held = 0
        self.reads: list[tuple[str, int]] = []

    def hold(self, *persistence_ids: str) -> None:
        """Make appends (of these entities, or of all) wait until `release`."""
        self._gate = trio.Event()
        self._held_pids = set(persistence_ids) or None

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()
        self._gate = None

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        gate = self._gate
        if gate is not None and (
            self._held_pids is None or events[0].persistence_id in self._held_pids
        ):
            self.held += 1
            try:
                await gate.wait()
            finally:
                self.held -= 1
        return await super().append(events)

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        self.reads.append((persistence_id, from_seq_nr))
        return await super().read_events(persistence_id, from_seq_nr, to_seq_nr, limit)


class Storage:
    """A journal that outlives runtimes: the same MemoryJournal, or the same SQLite file."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.path = directory / "journal.db"
        self._memory = MemoryJournal()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[MemoryJournal | SqliteJournal]:
        if self.kind == "memory":
            yield self._memory
        else:
            async with open_sqlite_journal(self.path) as journal:
                yield journal


async def stored_events(journal: Journal, persistence_id: str) -> list[Any]:
    records = await journal.read_events(persistence_id, 1, MAX_SEQ_NR, 10_000)
    assert [r.seq_nr for r in records] == list(range(1, len(records) + 1))
    decoded = []
    for record in records:
        assert record.payload is not None
        decoded.append(
            REGISTRY.decode(record.payload, persistence_id=persistence_id, seq_nr=record.seq_nr)
        )
    return decoded


async def stored_texts(journal: Journal, entity_id: str) -> list[str]:
    return [e.text for e in await stored_events(journal, f"Notebook|{entity_id}")]


SnappyCart = attrs.evolve(ShoppingCart, snapshot_policy=SnapshotPolicy(every=3, keep=2))
