"""What a projection's offsets hold of each entity it has seen, and the changes the tracker
hands the store to persist with the handler's writes."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from fluvial.core.offsets import TimestampOffset


@attrs.frozen
class SeenEntity:
    """The highest seq nr seen of one entity, and that event's timestamp and slice.

    `placeholders`: how many of its highest seq nrs (`seq_nr - placeholders + 1` .. `seq_nr`)
    were seen only as placeholders and not handled (0: everything up to `seq_nr` was handled,
    or settled); a replay may still deliver them. A store that does not keep it loads 0.
    """

    persistence_id: str
    seq_nr: int
    timestamp: int
    slice: int
    placeholders: int = 0

    @property
    def handled_seq_nr(self) -> int:
        """The highest seq nr below which no event waits for a replay."""
        return self.seq_nr - self.placeholders


@attrs.frozen
class OffsetChanges:
    """What changed since the last `take_changes`: to be persisted with the handler's writes.

    `previous` holds, per entity of `entities`, the seq nr the tracker had for it before
    these changes (0: none stored): what the store must still hold for the changes to apply,
    so that a store can compare and set, and refuse the changes of a second instance.
    `generation` is the generation of the stored offsets the tracker was loaded from (see
    `OffsetTracker`): a store refuses the changes once a management call made a newer one.
    """

    entities: tuple[SeenEntity, ...]
    slice_offsets: Mapping[int, TimestampOffset]
    previous: Mapping[str, int] = attrs.field(factory=dict)
    generation: int = 0

    @property
    def empty(self) -> bool:
        """Whether there is nothing to persist."""
        return not self.entities and not self.slice_offsets

    def then(self, later: OffsetChanges) -> OffsetChanges:
        """These changes followed by `later`, as one set of changes (for one save)."""
        entities = {e.persistence_id: e for e in self.entities}
        entities.update((e.persistence_id, e) for e in later.entities)
        return OffsetChanges(
            tuple(entities.values()),
            {**self.slice_offsets, **later.slice_offsets},
            {**later.previous, **self.previous},
            self.generation,
        )
