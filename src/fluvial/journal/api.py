"""The storage protocols every journal implements (SQLite, memory, later PostgreSQL).

Implementations provide the small primitives below; the catch-up-then-follow queries built on
them live once, in `fluvial.journal.queries`. Every implementation passes the contract suite in
`fluvial.testing.journal_contract`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import outcome

from fluvial.core.errors import FluvialError
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord, SnapshotRecord

MAX_SEQ_NR = 2**63 - 1


class JournalError(FluvialError):
    """The journal could not do what was asked."""


class JournalConflict(JournalError):
    """Another writer already stored this entity's seq nr; nothing of the batch was stored.

    The usual cause is a second live instance of one entity (another process or node): reload
    the entity from the journal and retry the command.
    """

    def __init__(self, persistence_id: str, seq_nr: int) -> None:
        super().__init__(
            f"{persistence_id} seq nr {seq_nr} is already stored by another writer; "
            "nothing of this batch was stored"
        )
        self.persistence_id = persistence_id
        self.seq_nr = seq_nr


class Journal(Protocol):
    """The append-only event store."""

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """Store one entity's consecutive events atomically; return them with timestamps.

        Raises JournalConflict (nothing stored) if any seq nr is already taken.
        """
        ...

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        """Up to `limit` events of one entity with from <= seq nr <= to, in seq nr order."""
        ...

    async def highest_seq_nr(self, persistence_id: str) -> int:
        """The highest stored seq nr of an entity, 0 if it has none."""
        ...

    async def read_events_by_slices(
        self, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
    ) -> list[EventRecord]:
        """Up to `limit` events of `entity_type` in `slices` that `after` has not seen, in
        timestamp order (then persistence id, seq nr)."""
        ...

    def append_count(self) -> int:
        """A counter of this process's commits, for `wait_for_new_events`."""
        ...

    async def wait_for_new_events(self, seen_append_count: int) -> None:
        """Return once `append_count()` differs from `seen_append_count`.

        Journals shared with other processes also return after a polling interval, since their
        commits bump no counter here. Spurious returns are allowed.
        """
        ...


@runtime_checkable
class AppendSoon(Protocol):
    """What a journal offers when it can answer an append with a callback (SQLite does)."""

    def append_soon(
        self,
        events: Sequence[EventRecord],
        on_done: Callable[[outcome.Outcome[Sequence[EventRecord]]], None],
    ) -> None:
        """Start an `append` without waiting for it: `on_done` receives what `append` would
        return or raise, called from the trio run that called this (possibly before this
        returns). Invalid input raises here, and `on_done` is then not called. `on_done` must
        not raise.

        For callers that must not pay a task switch per append: the entity runtime answers
        its commands from `on_done`.
        """
        ...


class SnapshotStore(Protocol):
    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        """Store a snapshot and delete all but the `keep` newest of its entity."""
        ...

    async def load_snapshot(
        self, persistence_id: str, max_seq_nr: int = MAX_SEQ_NR
    ) -> SnapshotRecord | None:
        """The newest snapshot of an entity at or below `max_seq_nr`."""
        ...
