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
from typing import Any

import attrs
import trio
import trio.testing

from fluvial.core.behavior import SnapshotPolicy
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity import EntityRef
from fluvial.examples.shopping_cart import ShoppingCart, register_cart
from fluvial.journal.api import MAX_SEQ_NR, Journal
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from fluvial.testing import MemoryJournal
from notes_behavior import (
    BadReply as BadReply,
)
from notes_behavior import (
    Crash as Crash,
)
from notes_behavior import (
    Forget as Forget,
)
from notes_behavior import (
    Halt as Halt,
)
from notes_behavior import (
    Ignore as Ignore,
)
from notes_behavior import (
    Note as Note,
)
from notes_behavior import (
    Notebook as Notebook,
)
from notes_behavior import (
    Noted as Noted,
)
from notes_behavior import (
    Notes as Notes,
)
from notes_behavior import (
    NotesCommand as NotesCommand,
)
from notes_behavior import (
    NotesEffect as NotesEffect,
)
from notes_behavior import (
    Read as Read,
)
from notes_behavior import (
    notes_command as notes_command,
)
from notes_behavior import (
    notes_event as notes_event,
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


async def ask_recording(
    ref: EntityRef[Any], outcomes: dict[str, object], name: str, command: Any
) -> None:
    """Ask `command`; record its reply, or the class of the error it raised, under `name`."""
    try:
        outcomes[name] = await ref.ask(command)
    except Exception as exc:
        outcomes[name] = type(exc)
