"""The management API of the memory offset store (`offsets`, `backlog`,
`wait_until_caught_up`, `set_offset`, `skip_event`, `reset`), a base of `MemoryOffsetStore`,
with the SQLite store's promises.

Each call on a projection the store does not know raises UnknownProjection; each that
changes offsets bumps the projection's generation, so that a running instance's next save
fails with ProjectionConflict instead of undoing it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import UnknownEvent, UnknownProjection
from fluvial.core.records import EventRecord
from fluvial.journal.memory._offset_state import MemoryOffsetState
from fluvial.journal.memory._transaction import MemoryTransaction, staged


class MemoryOffsetManagement(MemoryOffsetState):
    """What a user asks of the stored offsets of a projection: see the module docstring."""

    async def offsets(
        self, projection: str, slices: SliceRange | None = None
    ) -> dict[int, TimestampOffset]:
        """The stored offset of every slice of `projection` (in `slices`) that has one."""
        await trio.lowlevel.checkpoint()
        slices = slices or SliceRange.all()
        return {s: o for s, o in self._registered(projection).offsets.items() if s in slices}

    async def backlog(self, projection: str, entity_type: str, slices: SliceRange) -> int:
        """How many events of `entity_type` in `slices` are behind the journal head for
        `projection` (per slice from its stored offset; all events where none is stored).
        Raises UnknownProjection unless `projection` is known and consumes `entity_type`."""
        await trio.lowlevel.checkpoint()
        offsets = self._consumer_of(projection, entity_type).offsets
        return sum(
            1
            for record in await self._events(entity_type, slices)
            if record.slice not in offsets or record.timestamp > offsets[record.slice].timestamp
        )

    async def wait_until_caught_up(self, projection: str, slices: SliceRange | None = None) -> None:
        """Return once `projection` has handled (and stored the offset of) every event of its
        entity type in `slices` (default: all) that the journal held when this was called,
        and its query has passed them (so `backlog` counts none of them). Bound it with a
        cancel scope. Raises UnknownProjection."""
        await trio.lowlevel.checkpoint()
        stored = self._registered(projection)
        entity_heads: dict[str, int] = {}
        slice_heads: dict[int, int] = {}
        for record in await self._events(stored.entity_type, slices or SliceRange.all()):
            entity_heads[record.persistence_id] = record.seq_nr
            slice_heads[record.slice] = record.timestamp
        while True:
            seen = self._changed.count
            entities, offsets = stored.entities, stored.offsets
            if all(
                pid in entities and entities[pid].seq_nr >= head
                for pid, head in entity_heads.items()
            ) and all(s in offsets and offsets[s].timestamp >= t for s, t in slice_heads.items()):
                return
            await self._changed.wait(seen)

    async def set_offset(
        self, projection: str, slices: SliceRange, offset: TimestampOffset
    ) -> None:
        """Resume every slice in `slices` from `offset`: the events the journal holds before
        it count as handled and those after it as not (the entities of those slices are
        forgotten, then each gets its last seq nr before `offset`, or the one `offset.seen`
        gives at its timestamp). Call it while the projection is stopped: a running instance
        stops with ProjectionConflict at its next save. Raises UnknownProjection."""
        await trio.lowlevel.checkpoint()
        stored = self._registered(projection)
        handled: dict[str, SeenEntity] = {
            record.persistence_id: _handled_through(None, record)
            for record in await self._events(stored.entity_type, slices, before=offset.timestamp)
        }
        for pid, seq_nr in offset.seen.items():  # seen at the offset's own timestamp
            record = await self.journal.load_event(pid, seq_nr)
            if record is not None and record.slice in slices:
                handled[pid] = _handled_through(handled.get(pid), record)
        stored.generation += 1
        stored.entities = {
            pid: e for pid, e in stored.entities.items() if e.slice not in slices
        } | handled
        stored.offsets.update((s, offset) for s in slices)
        self._notify()

    async def skip_event(self, projection: str, persistence_id: str, seq_nr: int) -> None:
        """Count an entity's events up to `seq_nr` as handled, e.g. to get past a poison
        event. Never moves an entity backwards. Call it while the projection is stopped:
        a running instance stops with ProjectionConflict at its next save. Raises
        UnknownProjection, or UnknownEvent if the journal has no such event."""
        await trio.lowlevel.checkpoint()
        stored = self._registered(projection)
        record = await self.journal.load_event(persistence_id, seq_nr)
        if record is None:
            raise UnknownEvent(persistence_id, seq_nr)
        if record.entity_type != stored.entity_type:
            raise UnknownProjection.event_of_another_type(
                projection, stored.entity_type, persistence_id, record.entity_type
            )
        stored.entities[persistence_id] = _handled_through(
            stored.entities.get(persistence_id), record
        )
        stored.generation += 1
        self._notify()

    async def reset(
        self,
        projection: str,
        *,
        clear_read_model: Callable[[MemoryTransaction], None] | None = None,
    ) -> None:
        """Forget the offsets of `projection`: it starts again from the first event. The
        read model is kept, unless `clear_read_model` clears it: it runs in the same
        transaction (if it raises, nothing of the reset happens, and its exception comes out
        as itself). The read model's migration version is kept. Call it while the projection
        is stopped: a running instance stops with ProjectionConflict at its next save.
        Raises UnknownProjection."""
        await trio.lowlevel.checkpoint()
        stored = self._registered(projection)
        _, writes = staged(clear_read_model) if clear_read_model is not None else (None, [])
        stored.generation += 1
        stored.offsets.clear()
        stored.entities.clear()
        self._notify()
        for apply in writes:
            apply()


def _handled_through(earlier: SeenEntity | None, record: EventRecord) -> SeenEntity:
    """An entity as stored once its events up to `record` count as handled: never moved
    backwards, and its placeholders up to `record` settled."""
    if earlier is None:
        return SeenEntity(record.persistence_id, record.seq_nr, record.timestamp, record.slice)
    seq_nr = max(earlier.seq_nr, record.seq_nr)
    return SeenEntity(
        earlier.persistence_id,
        seq_nr,
        max(earlier.timestamp, record.timestamp),
        earlier.slice,
        seq_nr - max(earlier.handled_seq_nr, record.seq_nr),
    )
