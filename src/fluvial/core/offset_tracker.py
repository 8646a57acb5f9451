"""Exactly-once by sequence numbers: what a projection has seen, and what to do with the next
envelope.

Everything that decides whether an envelope is new, a duplicate or a sign of a gap lives here,
in one object that does no I/O. The shell asks `validate`, does what the verdict says (run the
handler, drop the envelope, replay the missing events, or look up an entity that has left
memory), reports back with `accept` / `passed`, and persists `take_changes()` with the handler's
own writes.

Two kinds of position are kept:
- per slice, the timestamp offset of the timestamp-ordered query (where to resume), advanced
  only by envelopes from the query, since live and replayed envelopes arrive out of that order;
- per entity, the highest seq nr handled (or seen as a placeholder, below), which decides
  duplicates and gaps whatever path an envelope took. Entities not seen for `window`
  microseconds of event time leave memory; the store keeps them, and the verdict
  `NeedsStoredSeqNr` asks the shell to look one up.

A slice whose events are rare (or all left out by a consumer's filter) would keep an old offset,
or none, and hold the resume point back to it: after a restart the query would read again all
the range's events since. The query reads every slice of the range in timestamp order, so where
it has come (`passed` records, and `reach` for a position without records) is where every slice
of the range has come: `move_quiet_slices` moves the slices left behind there, a write per
slice, which the shell calls now and then rather than for every envelope.

Placeholders (events without payload, which keep an entity's seq nrs gapless) are seen but not
handled until a replay fills them: `fluvial.core.placeholders`. The verdicts are in
`fluvial.core.offset_verdicts`, what the tracker holds of an entity and the changes it hands
out in `fluvial.core.seen_entities`; this module re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from fluvial.core.envelope_source import EnvelopeSource as EnvelopeSource
from fluvial.core.first_sight import FirstSight as FirstSight
from fluvial.core.first_sight import PreviousEvent as PreviousEvent
from fluvial.core.first_sight import judge_first_sight
from fluvial.core.ids import SliceRange
from fluvial.core.offset_verdicts import ACCEPTED as ACCEPTED
from fluvial.core.offset_verdicts import DUPLICATE as DUPLICATE
from fluvial.core.offset_verdicts import FILLS_PLACEHOLDER as FILLS_PLACEHOLDER
from fluvial.core.offset_verdicts import Accepted as Accepted
from fluvial.core.offset_verdicts import Duplicate as Duplicate
from fluvial.core.offset_verdicts import FillsPlaceholder as FillsPlaceholder
from fluvial.core.offset_verdicts import NeedsPreviousTimestamp as NeedsPreviousTimestamp
from fluvial.core.offset_verdicts import NeedsStoredSeqNr as NeedsStoredSeqNr
from fluvial.core.offset_verdicts import RejectedBacktracking as RejectedBacktracking
from fluvial.core.offset_verdicts import RejectedSeqNr as RejectedSeqNr
from fluvial.core.offset_verdicts import Verdict as Verdict
from fluvial.core.offsets import TimestampOffset
from fluvial.core.placeholders import filled, seen_as_placeholder, validate_after_placeholders
from fluvial.core.records import EventRecord
from fluvial.core.seen_entities import OffsetChanges as OffsetChanges
from fluvial.core.seen_entities import SeenEntity as SeenEntity


@attrs.frozen
class Savepoint:
    """What the tracker knew of one record's entity and slice before it was admitted, so
    that `roll_back_to` can undo the admission (its envelopes were not all handled)."""

    persistence_id: str
    slice: int
    entity: SeenEntity | EventRecord | None
    dirty: SeenEntity | EventRecord | None
    previous: int | None
    tip: tuple[int, dict[str, int]] | None
    slice_dirty: bool
    query_reached: int


class OffsetTracker:
    """The offsets of one projection instance over one slice range."""

    def __init__(
        self,
        slices: SliceRange,
        *,
        slice_offsets: Mapping[int, TimestampOffset] | None = None,
        entities: Iterable[SeenEntity] = (),
        window: int = 5 * 60 * 1_000_000,
        complete: bool = False,
        generation: int = 0,
        first_sight: FirstSight = FirstSight.QUERY_IN_COMMIT_ORDER,
    ) -> None:
        """`complete` says that `entities` holds every entity this projection has ever seen
        (a fresh projection), so an entity not in memory needs no store lookup.

        `generation` is the store's count of management calls that changed the stored
        offsets (`reset`, `set_offset`, `skip_event`) when it loaded them; the changes the
        tracker hands out carry it, so that the store refuses them after such a call (the
        tracker's memory no longer says what the store holds).

        `first_sight` is the rule for an entity never seen, met above seq nr 1: a property of
        the source, not of the store that loads the tracker, so the runner sets it (from
        `Source.first_sight`) before it admits anything."""
        self.slices = slices
        self.window = window
        self.generation = generation
        self.first_sight = first_sight
        # Per slice: the timestamp and the (pid -> seq nr) seen at it. Kept as mutable pairs,
        # and entities as the records themselves, because these change for every envelope.
        self._slice_tips: dict[int, tuple[int, dict[str, int]]] = {
            s: (o.timestamp, dict(o.seen)) for s, o in (slice_offsets or {}).items()
        }
        self._entities: dict[str, SeenEntity | EventRecord] = {
            e.persistence_id: e for e in entities
        }
        self._complete = complete
        self._latest = max((e.timestamp for e in self._entities.values()), default=0)
        self._evicted_up_to = 0
        self._dirty_entities: dict[str, SeenEntity | EventRecord] = {}
        self._previous: dict[str, int] = {}  # of each dirty entity: see OffsetChanges
        self._dirty_slices: set[int] = set()
        # The newest timestamp the query delivered since loading: it has delivered every
        # event of the range before it.
        self._query_reached = 0
        self._quiet_moved_to = 0  # where `move_quiet_slices` last moved them

    def resume_offset(self) -> TimestampOffset:
        """Where the query resumes: the earliest of the range's slice offsets, so no slice
        misses an event (events of later slices seen again are duplicates by seq nr)."""
        tips = [self._slice_tips.get(s) for s in self.slices]
        if any(tip is None for tip in tips):
            return TimestampOffset.start()
        present = [tip for tip in tips if tip is not None]
        earliest = min(timestamp for timestamp, _ in present)
        seen: dict[str, int] = {}
        for timestamp, seen_at in present:
            if timestamp == earliest:
                seen.update(seen_at)
        return TimestampOffset(earliest, seen)

    def reach(self, timestamp: int) -> None:
        """The source's ordered query has delivered every event of the range before
        `timestamp`, though no record came with it (those between passed the consumer's
        filter nowhere, or came by another path: `fluvial.projection.api.QueryReached`)."""
        if timestamp > self._query_reached:
            self._query_reached = timestamp

    def move_quiet_slices(self) -> int:
        """Move the offset of every slice the query has passed without an event of it, to
        where the query has come (`reach`, `passed`): the changes then carry it, and a restart
        resumes there, not at that slice's last event, or at the start. How many moved.

        Sound because the query reads the whole range in timestamp order: before the newest
        timestamp it delivered, it delivered every event of every slice, and the tracker has
        taken them in that order. The offset moved to carries no seen entities, so events at
        that very timestamp are read again after a restart (duplicates by seq nr)."""
        reached = self._query_reached
        if reached == 0:
            return 0
        self._quiet_moved_to = reached
        tips, moved = self._slice_tips, 0
        for slice_ in self.slices:
            tip = tips.get(slice_)
            if tip is None or tip[0] < reached:
                tips[slice_] = (reached, {})
                self._dirty_slices.add(slice_)
                moved += 1
        return moved

    @property
    def quiet_slices_behind(self) -> bool:
        """Whether the query has come further since `move_quiet_slices` last moved them."""
        return self._query_reached > self._quiet_moved_to

    def slice_offset(self, slice_: int) -> TimestampOffset | None:
        """Where the query has passed in `slice_` (None: nowhere yet)."""
        tip = self._slice_tips.get(slice_)
        return _offset_of(tip) if tip else None

    def seq_nr_of(self, persistence_id: str) -> int | None:
        """The highest seq nr seen of the entity (handled or a placeholder); None: not in
        memory."""
        seen = self._entities.get(persistence_id)
        return seen.seq_nr if seen else None

    def handled_seq_nr_of(self, persistence_id: str) -> int | None:
        """The seq nr below which no event of the entity waits for a replay (below its seq nr
        when its latest ones were seen only as placeholders); None: not in memory."""
        seen = self._entities.get(persistence_id)
        if seen is None:
            return None
        return seen.handled_seq_nr if isinstance(seen, SeenEntity) else seen.seq_nr

    def validate(
        self, record: EventRecord, source: EnvelopeSource, previous: PreviousEvent | None = None
    ) -> Verdict:
        """What to do with `record`, which arrived by `source`; `previous` is the source's
        answer to an earlier `NeedsPreviousTimestamp` for it."""
        seen = self._entities.get(record.persistence_id)
        if seen is None and not self._complete:
            return NeedsStoredSeqNr(record.persistence_id)
        if seen.__class__ is SeenEntity and seen.placeholders:
            return validate_after_placeholders(
                record,
                seen,
                replay=source is EnvelopeSource.REPLAY,
                backtracking=source is EnvelopeSource.BACKTRACKING,
            )
        highest = seen.seq_nr if seen else 0
        if record.seq_nr <= highest:
            return DUPLICATE
        if record.seq_nr == highest + 1:
            return ACCEPTED
        if highest == 0 and source is not EnvelopeSource.REPLAY:
            tip = self._slice_tips.get(record.slice)
            return judge_first_sight(
                self.first_sight,
                record,
                source,
                previous,
                slice_offset=tip[0] if tip else None,
                window=self.window,
            )
        if source is EnvelopeSource.BACKTRACKING:
            return RejectedBacktracking(highest + 1)
        return RejectedSeqNr(highest + 1)

    def learn(self, persistence_id: str, stored: SeenEntity | None) -> None:
        """The store's answer to `NeedsStoredSeqNr` (None: never seen)."""
        if stored is not None:
            self._entities[persistence_id] = stored
        else:
            self._entities[persistence_id] = SeenEntity(persistence_id, 0, 0, 0)

    def accept(self, record: EventRecord) -> None:
        """`record` (verdict `Accepted`) is done with: handled, or a placeholder that a replay
        delivered (the producer still drops it: nothing to handle, nothing to replay)."""
        pid = record.persistence_id
        if pid not in self._dirty_entities:
            seen = self._entities.get(pid)
            self._previous[pid] = seen.seq_nr if seen else 0
        self._entities[pid] = record
        self._dirty_entities[pid] = record
        if record.timestamp > self._latest:
            self._latest = record.timestamp
            self._evict()

    def saw_placeholder(self, record: EventRecord) -> None:
        """A stream (not a replay) delivered `record` (verdict `Accepted`) as a placeholder:
        its seq nr is seen, but not handled, until a replay fills it."""
        self._changed(seen_as_placeholder(self._entities.get(record.persistence_id), record))

    def fill_placeholder(self, record: EventRecord) -> None:
        """A replay delivered `record` (verdict `FillsPlaceholder`): it was handled, or it is
        a placeholder again (settled: a replay will not deliver more of it)."""
        self._changed(filled(self._entities[record.persistence_id], record))

    def _changed(self, entity: SeenEntity) -> None:
        pid = entity.persistence_id
        if pid not in self._dirty_entities:
            seen = self._entities.get(pid)
            self._previous[pid] = seen.seq_nr if seen else 0
        self._entities[pid] = entity
        self._dirty_entities[pid] = entity
        if entity.timestamp > self._latest:
            self._latest = entity.timestamp
            self._evict()

    def passed(self, record: EventRecord, source: EnvelopeSource = EnvelopeSource.QUERY) -> None:
        """The ordered query delivered `record` (handled or a duplicate): move its slice on.

        Or the backtracking query did (`source`), which reads behind the query: then only if
        the query has reached the record's timestamp in this run (not merely a stored offset
        of another slice says so), so that every event of its slice before it was delivered
        by the query or committed late, as the record itself was, and is the backtracking
        query's to find (after a restart too: it starts its span behind the resume offset).
        Without it, a slice whose last event committed late would stay behind that event,
        which its projection has handled, until another event of the slice arrives."""
        if source is EnvelopeSource.QUERY:
            self._query_reached = max(self._query_reached, record.timestamp)
        elif record.timestamp > self._query_reached:
            return
        tip = self._slice_tips.get(record.slice)
        if tip is None or record.timestamp > tip[0]:
            self._slice_tips[record.slice] = (
                record.timestamp,
                {record.persistence_id: record.seq_nr},
            )
        elif record.timestamp == tip[0] and tip[1].get(record.persistence_id, 0) < record.seq_nr:
            tip[1][record.persistence_id] = record.seq_nr
        else:
            return
        self._dirty_slices.add(record.slice)

    def savepoint(self, record: EventRecord) -> Savepoint:
        """Before admitting `record`: what its admission may change (its entity, replays of
        that entity included, and its slice's offset)."""
        pid, slice_ = record.persistence_id, record.slice
        tip = self._slice_tips.get(slice_)
        return Savepoint(
            persistence_id=pid,
            slice=slice_,
            entity=self._entities.get(pid),
            dirty=self._dirty_entities.get(pid),
            previous=self._previous.get(pid),
            tip=(tip[0], dict(tip[1])) if tip else None,
            slice_dirty=slice_ in self._dirty_slices,
            query_reached=self._query_reached,
        )

    def roll_back_to(self, savepoint: Savepoint) -> None:
        """Undo what happened to the savepoint's entity and slice since it was taken, e.g.
        before saving the offsets of a stop that interrupted the handler."""
        pid, slice_ = savepoint.persistence_id, savepoint.slice
        _restore(self._entities, pid, savepoint.entity)
        _restore(self._dirty_entities, pid, savepoint.dirty)
        _restore(self._previous, pid, savepoint.previous)
        _restore(self._slice_tips, slice_, savepoint.tip)
        if savepoint.slice_dirty:
            self._dirty_slices.add(slice_)
        else:
            self._dirty_slices.discard(slice_)
        self._query_reached = savepoint.query_reached

    def take_changes(self) -> OffsetChanges:
        """What changed since the last call (the caller persists it); starts afresh."""
        changes = OffsetChanges(
            tuple(
                r
                if isinstance(r, SeenEntity)
                else SeenEntity(r.persistence_id, r.seq_nr, r.timestamp, r.slice)
                for r in self._dirty_entities.values()
            ),
            {s: _offset_of(self._slice_tips[s]) for s in sorted(self._dirty_slices)},
            self._previous,
            self.generation,
        )
        self._dirty_entities.clear()
        self._previous = {}
        self._dirty_slices.clear()
        return changes

    @property
    def entities_in_memory(self) -> int:
        """How many entities' seq nrs are held in memory now (bounded by `window`)."""
        return len(self._entities)

    def _evict(self) -> None:
        # Amortized: sweep when event time has moved on by half a window since the last sweep.
        if self._latest - self._evicted_up_to < self.window // 2:
            return
        horizon = self._latest - self.window
        stale = [
            pid
            for pid, seen in self._entities.items()
            if seen.timestamp < horizon and pid not in self._dirty_entities
        ]
        for pid in stale:
            del self._entities[pid]
        if stale:
            self._complete = False
        self._evicted_up_to = self._latest


def _restore(mapping: dict[Any, Any], key: object, value: object | None) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _offset_of(tip: tuple[int, dict[str, int]]) -> TimestampOffset:
    return TimestampOffset(tip[0], dict(tip[1]))  # a copy: the tip changes in place
