"""The memory offset store of projections: the SQLite store's promises, kept in memory.

An exactly-once handler writes through a `MemoryTransaction`: it registers its read-model
changes, and the store applies them only when the offsets commit with them, so a conflict or
a handler that raises leaves both as they were. Every save compares and sets like SQLite's:
the entities' stored seq nrs and the projection's generation must still be the ones the
instance loaded. Leases expire by the store's `clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs
import trio

from fluvial.core.ids import SliceRange
from fluvial.core.leases import Lease
from fluvial.core.offset_tracker import OffsetChanges, OffsetTracker, SeenEntity
from fluvial.core.projection_errors import (
    ProjectionConflict,
    ProjectionLeaseHeld,
    read_model_too_new,
)
from fluvial.journal.api import Journal
from fluvial.journal.memory._consumer_filters import MemoryConsumerFilters
from fluvial.journal.memory._offset_management import MemoryOffsetManagement
from fluvial.journal.memory._offset_state import StoredProjection
from fluvial.journal.memory._transaction import MemoryTransaction, staged

T = TypeVar("T")


class MemoryOffsetStore(MemoryOffsetManagement, MemoryConsumerFilters):
    """Projection offsets, leases and read-model versions in memory (nothing survives the
    process), over the events of `journal`: an `OffsetStore[MemoryTransaction]` with the
    management API (`offsets`, `backlog`, `set_offset`, `skip_event`, `reset`,
    `wait_until_caught_up`) and a gRPC consumer's filters (`ConsumerFilterStore`). For
    tests: a projection over a `MemoryJournal` runs with no file.

    `MemoryJournal.offset_store()` is the journal's own (one per journal, on the wall clock);
    a store made here is another one, with offsets of its own. `clock` gives the seconds that
    leases expire by (`trio.current_time` suits tests on virtual time).
    """

    def __init__(self, journal: Journal, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(journal)
        self.clock = clock
        self._consumer_filters: dict[str, bytes] = {}

    async def register(self, projection: str, entity_type: str) -> None:
        """Make `projection`, a consumer of `entity_type` events, known to the store.
        Raises UnknownProjection if the name is registered with another entity type."""
        await trio.lowlevel.checkpoint()
        self._register(projection, entity_type)

    async def load(self, projection: str, slices: SliceRange, *, window: int) -> OffsetTracker:
        """The tracker of `projection` over `slices`, holding the entities seen within
        `window` microseconds before the resume point (whether older ones exist: `complete`)
        and the generation of the stored offsets. Raises UnknownProjection."""
        await trio.lowlevel.checkpoint()
        stored = self._registered(projection)
        offsets = {s: o for s, o in stored.offsets.items() if s in slices}
        resume = OffsetTracker(slices, slice_offsets=offsets, window=window).resume_offset()
        horizon = resume.timestamp - window
        in_range = [e for e in stored.entities.values() if e.slice in slices]
        recent = [e for e in in_range if e.timestamp >= horizon]
        return OffsetTracker(
            slices,
            slice_offsets=offsets,
            entities=recent,
            window=window,
            complete=len(recent) == len(in_range),
            generation=stored.generation,
        )

    async def load_entity(self, projection: str, persistence_id: str) -> SeenEntity | None:
        """The stored state of one entity for `projection` (None: never seen)."""
        await trio.lowlevel.checkpoint()
        stored = self._projections.get(projection)
        return stored.entities.get(persistence_id) if stored else None

    async def save(self, projection: str, slices: SliceRange, changes: OffsetChanges) -> None:
        """Store `changes` of the instance over `slices`; raises ProjectionConflict (and
        stores nothing) if the stored offsets are not the ones it read."""
        await self.commit(projection, slices, changes, None)

    async def commit(
        self,
        projection: str,
        slices: SliceRange,
        changes: OffsetChanges,
        write: Callable[[MemoryTransaction], T] | None,
    ) -> T | None:
        """Compare and set `changes`, and run `write` (an exactly-once handler's writes) with
        a transaction whose writes apply with them; return what `write` returned.

        If the store no longer holds what the instance loaded, `write` does not run, nothing
        is stored and ProjectionConflict is raised. `write` runs once per call; if it raises,
        nothing of it or of the changes is stored and its exception is raised as itself.
        """
        await trio.lowlevel.checkpoint()
        if changes.empty and write is None:
            return None
        stored = self._registered(projection)
        if not _still_current(stored, changes):
            raise ProjectionConflict.offsets_changed(projection, slices)
        result, writes = staged(write) if write is not None else (None, [])
        stored.entities.update((e.persistence_id, e) for e in changes.entities)
        stored.offsets.update(changes.slice_offsets)
        self._notify()
        for apply in writes:
            apply()
        return result

    async def migrate_read_model(
        self, projection: str, migrations: Sequence[Callable[[MemoryTransaction], None]]
    ) -> None:
        """Bring the read model of `projection` to version `len(migrations)`: run, in one
        transaction, the migrations it has not run yet (the store keeps its version), so each
        runs once per store. A migration that raises undoes all of them and comes out as
        itself; UsageError if the store holds a newer version than `migrations` reach.
        Raises UnknownProjection."""
        await trio.lowlevel.checkpoint()
        stored = self._registered(projection)
        version = stored.read_model_version
        if version > len(migrations):
            raise read_model_too_new(projection, version, len(migrations))

        def run(txn: MemoryTransaction) -> None:
            for migration in migrations[version:]:
                migration(txn)

        _, writes = staged(run)
        stored.read_model_version = len(migrations)
        for apply in writes:
            apply()

    async def acquire_lease(
        self, projection: str, entity_type: str, slices: SliceRange, *, owner: str, duration: float
    ) -> Lease:
        """Take the lease of `projection` over `slices` for `duration` seconds, for `owner`,
        registering the projection if it is new; an expired lease of an overlapping range is
        taken over. Raises ProjectionLeaseHeld if another owner holds a live lease of an
        overlapping range, UnknownProjection if `projection` consumes another entity type."""
        await trio.lowlevel.checkpoint()
        now = self.clock()
        if projection in self._projections:
            self._consumer_of(projection, entity_type)
        overlapping = [
            lease
            for (name, held), lease in self._leases.items()
            if name == projection and held.min <= slices.max and held.max >= slices.min
        ]
        live = [lease for lease in overlapping if lease.owner != owner and lease.expires_at > now]
        if live:
            raise ProjectionLeaseHeld.by(slices, max(live, key=lambda lease: lease.expires_at), now)
        self._register(projection, entity_type)
        for lease in overlapping:
            del self._leases[projection, lease.slices]
        lease = Lease(projection, slices, owner, now + duration)
        self._leases[projection, slices] = lease
        return lease

    async def renew_lease(self, lease: Lease, duration: float) -> Lease:
        """Extend `lease` to `duration` seconds from now. Raises ProjectionConflict if its
        owner no longer holds it (another instance took it over after it expired)."""
        await trio.lowlevel.checkpoint()
        held = self._leases.get((lease.projection, lease.slices))
        if held is None or held.owner != lease.owner:
            raise ProjectionConflict.lease_lost(lease.projection, lease.slices)
        renewed = attrs.evolve(held, expires_at=self.clock() + duration)
        self._leases[lease.projection, lease.slices] = renewed
        return renewed

    async def release_lease(self, lease: Lease) -> None:
        """Give `lease` up, so that another instance can start at once (no-op if lost)."""
        await trio.lowlevel.checkpoint()
        held = self._leases.get((lease.projection, lease.slices))
        if held is not None and held.owner == lease.owner:
            del self._leases[lease.projection, lease.slices]


def _still_current(stored: StoredProjection, changes: OffsetChanges) -> bool:
    """Whether the store still holds what `changes` were made from: their generation, and
    per entity the seq nr `changes.previous` says (0: none stored)."""
    if stored.generation != changes.generation:
        return False
    for entity in changes.entities:
        current = stored.entities.get(entity.persistence_id)
        if (current.seq_nr if current else 0) != changes.previous.get(entity.persistence_id, 0):
            return False
    return True
