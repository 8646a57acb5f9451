"""What the memory offset store holds, per projection, and the reads and checks its calls
share (`_offset_store.py`, `_offset_management.py`).

Every call checkpoints once, first (so a cancelled call did nothing), reads what it needs
from the journal, and then checks and changes the store without awaiting anything more: no
other task sees it half done, which is the memory store's transaction.
"""

from __future__ import annotations

import attrs

from fluvial._wakeup import Signal
from fluvial.core.ids import SliceRange
from fluvial.core.leases import Lease
from fluvial.core.offset_tracker import SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import UnknownProjection
from fluvial.core.records import EventRecord
from fluvial.journal.api import MAX_TIMESTAMP, Journal
from fluvial.journal.queries import current_events_by_slices


@attrs.define
class StoredProjection:
    """One projection as the store knows it: the entity type it consumes, the version of its
    read model, the generation of its offsets (bumped by each management call that changes
    them), its slice offsets and its entities' seq nrs."""

    entity_type: str
    generation: int = 0
    read_model_version: int = 0
    offsets: dict[int, TimestampOffset] = attrs.Factory(dict)
    entities: dict[str, SeenEntity] = attrs.Factory(dict)


class MemoryOffsetState:
    """The projections, leases and change notifications of a memory offset store."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._projections: dict[str, StoredProjection] = {}
        self._leases: dict[tuple[str, SliceRange], Lease] = {}
        self._changed = Signal()

    def _registered(self, projection: str) -> StoredProjection:
        """`projection` as stored; UnknownProjection if the store does not know it."""
        stored = self._projections.get(projection)
        if stored is None:
            raise UnknownProjection(
                f"no projection named {projection!r} in this memory offset store (it has "
                "never run nor been registered; check the name)",
                projection,
            )
        return stored

    def _consumer_of(self, projection: str, entity_type: str) -> StoredProjection:
        """`projection` as stored; UnknownProjection unless it consumes `entity_type`."""
        stored = self._registered(projection)
        if stored.entity_type != entity_type:
            raise UnknownProjection.not_a_consumer_of(projection, stored.entity_type, entity_type)
        return stored

    def _register(self, projection: str, entity_type: str) -> StoredProjection:
        """`projection`, known from now on as a consumer of `entity_type` (UnknownProjection
        if it is known with another one)."""
        if projection not in self._projections:
            self._projections[projection] = StoredProjection(entity_type)
        return self._consumer_of(projection, entity_type)

    def _notify(self) -> None:
        """Wake the callers of `wait_until_caught_up`: the stored offsets changed."""
        self._changed.notify()

    async def _events(
        self, entity_type: str, slices: SliceRange, *, before: int | None = None
    ) -> list[EventRecord]:
        """The journal's events of `entity_type` in `slices` (with timestamps below `before`),
        in timestamp order, without payloads."""
        to_timestamp = MAX_TIMESTAMP if before is None else before - 1
        events = current_events_by_slices(
            self.journal, entity_type, slices, to_timestamp=to_timestamp, with_payloads=False
        )
        return [record async for record in events]
