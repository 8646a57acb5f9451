"""The storage protocols every journal implements (SQLite, memory, later PostgreSQL).

Implementations provide the small primitives below; the catch-up-then-follow queries built on
them live once, in `fluvial.journal.queries`. Every implementation passes the contract suite in
`fluvial.testing.journal_contract`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import outcome

from fluvial.core.errors import FluvialError

# The answers of `WriteFromElsewhere`, decided in the core; journals import them from here.
from fluvial.core.events_from_elsewhere import EventAlreadyStored as EventAlreadyStored
from fluvial.core.events_from_elsewhere import EventGap as EventGap
from fluvial.core.events_from_elsewhere import EventStored as EventStored
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_SEQ_NR as MAX_SEQ_NR
from fluvial.core.records import MAX_TIMESTAMP as MAX_TIMESTAMP
from fluvial.core.records import EventRecord, SnapshotRecord
from fluvial.journal._live import LivePublisher


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


class JournalGap(JournalError):
    """An append whose first seq nr is not the entity's highest stored seq nr + 1 (it would
    leave a gap); nothing of the batch was stored.

    The caller's idea of the entity is wrong (seq nrs come from its stored events): read
    `highest_seq_nr` and append from the next one.
    """

    def __init__(self, persistence_id: str, seq_nr: int, highest_seq_nr: int) -> None:
        super().__init__(
            f"{persistence_id} seq nr {seq_nr} does not follow its highest stored seq nr "
            f"{highest_seq_nr} (the next is {highest_seq_nr + 1}); nothing of this batch "
            "was stored"
        )
        self.persistence_id = persistence_id
        self.seq_nr = seq_nr
        self.highest_seq_nr = highest_seq_nr


class JournalClosed(JournalError):
    """A call on a journal (or its database) after it was closed; nothing was done.

    Keep using a journal only inside the `async with` block that opened it.
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the journal {name} is closed: use it only inside the `async with` block "
            "that opened it; nothing was done"
        )
        self.name = name


class Journal(Protocol):
    """The append-only event store."""

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """Store one entity's consecutive events atomically; return them with timestamps.

        Raises InvalidAppend for events that are not one entity's consecutive seq nrs,
        JournalConflict if a seq nr is already taken, and JournalGap if the first seq nr is
        not the entity's highest stored + 1; in each case nothing of the batch is stored.
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
        self,
        entity_type: str,
        slices: SliceRange,
        after: TimestampOffset,
        limit: int,
        *,
        to_timestamp: int = MAX_TIMESTAMP,
        with_payloads: bool = True,
        exclude_origin: str | None = None,
    ) -> list[EventRecord]:
        """Up to `limit` events of `entity_type` in `slices` that `after` has not seen, with
        timestamps up to `to_timestamp` (inclusive), in timestamp order (then persistence id,
        seq nr).

        With `with_payloads=False` every record's payload is None (and the journal need not
        read it): for queries that look ahead, such as backtracking, whose consumers load the
        events they accept with `load_event`. With `exclude_origin`, the events whose
        `replication.origin_replica` is that replica come without payload, as placeholders
        (the query does not read their payloads): a producer does not send an event back to
        the replica it came from, and the consumer's seq nrs stay gapless.
        """
        ...

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """The stored event `seq_nr` of an entity, with its payload; None if not stored."""
        ...

    async def latest_event_timestamp(self, entity_type: str, slices: SliceRange) -> int | None:
        """The timestamp of the newest stored event of `entity_type` in `slices`; None if it
        has none. One index-backed read, no payloads: a consumer's lag (`fluvial.projection`'s
        `projection_lag`, the producer's `LatestEventTimestamp`) asks it again and again.
        Committed events only: with concurrent writers (`HasConcurrentWriters`) a transaction
        still open may commit one with an earlier timestamp after this answered."""
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


@runtime_checkable
class HasLivePath(Protocol):
    """A journal that publishes what it commits to in-process subscribers (SQLite and memory
    do): a projection over it gets new events with no database read."""

    @property
    def live(self) -> LivePublisher:
        """Where the journal publishes every batch it commits, right after the commit."""
        ...


@runtime_checkable
class HasConcurrentWriters(Protocol):
    """A journal that many writers append to at once (PostgreSQL: connections of any number
    of processes), so that its timestamps are not commit order: a transaction that took its
    timestamp first can commit after one that took a later one, and a reader that has passed
    that time never sees its event in timestamp order.

    A projection over such a journal (`fluvial.projection`'s `LocalJournalSource`) reads a
    little behind the journal's clock, runs a backtracking query further behind it, and
    judges an entity it first meets above seq nr 1 by the timestamp of the event before
    (`fluvial.core.first_sight.FirstSight.PREVIOUS_OLDER_THAN_WINDOW`). Journals with one
    writer (SQLite, memory) hand out timestamps in commit order and are not this."""

    async def current_timestamp(self) -> int:
        """The journal's clock now, in the microseconds of its timestamps (PostgreSQL: the
        database server's clock, which every writer's timestamps come from)."""
        ...


class SnapshotStore(Protocol):
    """Where an entity's snapshots are kept: the starting point of its recovery."""

    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        """Store a snapshot and delete all but the `keep` newest of its entity."""
        ...

    async def load_snapshot(
        self, persistence_id: str, max_seq_nr: int = MAX_SEQ_NR
    ) -> SnapshotRecord | None:
        """The newest snapshot of an entity at or below `max_seq_nr`."""
        ...

    async def read_snapshots_by_slices(
        self, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
    ) -> list[SnapshotRecord]:
        """Up to `limit` of the newest snapshots of the entities of `entity_type` in `slices`
        (one per entity), in the order of their events' timestamps (`event_timestamp`, then
        persistence id), those `after` has not seen: a snapshot stands in its event's place
        in the events-by-slices order (see `snapshot_is_behind`).

        The starting point of streams that begin with each entity's snapshot and continue with
        its later events.
        """
        ...


WriteFromElsewhereResult: TypeAlias = EventStored | EventAlreadyStored | EventGap


@runtime_checkable
class WriteFromElsewhere(Protocol):
    """A journal that stores events another journal wrote first (producer push from an edge,
    replicated events of another replica), keeping their identity.

    The seam that the gRPC push consumer and the replication runtime write through: events
    keep their persistence id, seq nr, write timestamp (the origin's) and replication
    metadata, and get this journal's own `timestamp` (its commit order, which local
    consumers' offsets follow). Redelivery is harmless: a seq nr stored already is answered
    `EventAlreadyStored`, so a sender can resend from any point after a lost answer.
    """

    async def write_from_elsewhere(
        self, events: Sequence[EventRecord]
    ) -> list[WriteFromElsewhereResult]:
        """Store the events that follow their entity's stored ones; answer one result per
        event, in order.

        Events may be of several entities; each is taken in order, against its entity's
        highest seq nr as stored by then (earlier events of the same call included): at or
        below it, `EventAlreadyStored`; the next one, `EventStored`; beyond it, `EventGap`
        (and nothing of it is stored). The stored events commit together, atomically, and
        reach followers and live subscribers like appended ones; appends and these writes
        of one entity check each other's seq nrs (`JournalConflict`, `JournalGap`).

        Raises InvalidAppend (storing nothing) for an event with a seq nr outside
        1..MAX_SEQ_NR or without a `write_timestamp` (events from elsewhere were written
        somewhere at some time), and the journal's errors (`JournalClosed`, file errors),
        also storing nothing.
        """
        ...
