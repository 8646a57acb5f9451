"""The seams of the projection runner: where events come from, and where offsets live.

`serve_projection` uses only these protocols, so a projection runs over any source and any
store: the local journal (SQLite, memory, later PostgreSQL) or a gRPC consumer as its `Source`,
the SQLite file, memory or PostgreSQL as its `OffsetStore`. docs/seams.md explains them.

- `SourceProvider` gives the `Source` of one projection instance: one entity type (or stream)
  and slice range. The source delivers `Batch`es of records, each tagged with the path that
  brought it (query, live, backtracking); the offset tracker drops what two paths both bring.
  Between batches it may send `QueryReached`: its ordered query has come that far with no
  record to show for it (a consumer's filter left out what it read), so the offsets of slices
  without events can move on, and a restart need not read those events again.
  It also replays one entity's events between two seq nrs (to fill a gap), loads one event
  with its payload (records may come without one: backtracking, filtered events) and gives the
  timestamp of one event, and says by which first-sight rule its entities are judged
  (`first_sight`: concurrent writers or not). A source that also knows its latest event
  timestamp (`HasLatestEventTimestamp`) can report a projection's lag (`projection_lag`).
- `OffsetStore[T]` loads and saves an instance's `OffsetTracker` state, compares and sets it,
  holds the leases of slice ranges, and is the management API. An exactly-once handler writes
  through the store's transaction, of type `T` (`sqlite3.Connection` for the SQLite store):
  the store runs the handler's writes and the offsets in one transaction.
- `ConsumerFilterStore` keeps a gRPC consumer's filter of each stream id (docs/filters.md), in
  the consumer's own database, so that it survives a restart; every offset store is one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import attrs
import trio

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.filters import Filter, FilterCriteriaUpdate
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange
from fluvial.core.leases import Lease
from fluvial.core.offset_tracker import OffsetChanges, OffsetTracker, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.journal.api import Journal
from fluvial.projection._source_settings import SourceSettings

__all__ = [
    "Batch",
    "ConsumerFilterStore",
    "HasLatestEventTimestamp",
    "HasOffsetStore",
    "JournalWithOffsetStore",
    "OffsetStore",
    "QueryReached",
    "Source",
    "SourceMessage",
    "SourceProvider",
]

T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")

# Records in timestamp order from one path of a source.
Batch = tuple[Sequence[EventRecord], EnvelopeSource]


@attrs.frozen
class QueryReached:
    """From a source, between batches: its ordered query has delivered every event of the
    slice range before `timestamp` (microseconds) that the projection is to see, and none
    since the last QUERY batch (e.g. a consumer's filter left out all it read)."""

    timestamp: int


# What a source sends its projection instance.
SourceMessage = Batch | QueryReached


class Source(Protocol):
    """The events of one projection instance (one entity type or stream, one slice range)."""

    @property
    def first_sight(self) -> FirstSight:
        """How an entity never seen, met above seq nr 1, is judged (`fluvial.core.first_sight`):
        `QUERY_IN_COMMIT_ORDER` when the events come from a journal with one writer, whose
        query cannot skip an event; `PREVIOUS_OLDER_THAN_WINDOW` when they come from one with
        concurrent writers (PostgreSQL), where an event can commit behind the query."""
        ...

    async def run(
        self,
        offset: TimestampOffset,
        send: trio.MemorySendChannel[SourceMessage],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send the events after `offset` to `send`, catching up and then following, until
        cancelled (a source that sends only `Batch`es may take a channel of those). Call it
        with `nursery.start`: it is started once events committed after that will reach
        `send` (a live subscription is open). A read error ends it, raised as itself (the
        runner restarts the instance from its stored offsets, calling `run` of the same source
        again)."""
        ...

    async def replay(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int
    ) -> Sequence[EventRecord]:
        """The events of one entity with from <= seq nr <= to, in seq nr order, with their
        payloads (placeholders stay without one); fewer if the source has fewer."""
        ...

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """One event with its payload, for a record that came without one; None if the
        source does not have it."""
        ...

    async def event_timestamp(self, persistence_id: str, seq_nr: int) -> int | None:
        """The timestamp of one event (None if the source does not have it): the first-sight
        rule of `PREVIOUS_OLDER_THAN_WINDOW` asks for it."""
        ...


@runtime_checkable
class HasLatestEventTimestamp(Protocol):
    """A `Source` that can tell the timestamp of its newest event: what `projection_lag`
    compares an instance's stored offsets with (the local journal's source and the gRPC
    consumer's are such sources)."""

    async def latest_event_timestamp(self) -> int | None:
        """The timestamp of the newest event of the source's entity type (or stream) in its
        slice range, None if it has none; errors come out as themselves."""
        ...


@runtime_checkable
class SourceProvider(Protocol):
    """Gives the source of each projection instance (`serve_projection` asks once per
    instance)."""

    def source(self, entity_type: str, slices: SliceRange, settings: SourceSettings) -> Source:
        """The source of the events of `entity_type` (or stream) in `slices`."""
        ...


class OffsetStore(Protocol[T_co]):
    """Where a projection's offsets live, with their leases and management API.

    Every save compares and sets: the entities' stored seq nrs must still be the ones the
    saving instance loaded, and the projection's generation (which the management calls that
    change offsets bump) the one it loaded; otherwise nothing is stored and
    ProjectionConflict is raised. `T_co` is the type of the store's transaction, which
    exactly-once handlers, read-model migrations and `reset(clear_read_model=)` write
    through. `fluvial.testing.offset_store_contract` is the contract every store passes.
    """

    async def register(self, projection: str, entity_type: str) -> None:
        """Make `projection`, a consumer of `entity_type` events, known to the store. Raises
        UnknownProjection if the name is registered with another entity type."""
        ...

    async def load(self, projection: str, slices: SliceRange, *, window: int) -> OffsetTracker:
        """The tracker of `projection` over `slices`: the slice offsets, the entities seen
        within `window` microseconds before the resume point (whether older ones exist) and
        the generation. Raises UnknownProjection if it is not registered."""
        ...

    async def load_entity(self, projection: str, persistence_id: str) -> SeenEntity | None:
        """The stored state of one entity for `projection` (None: never seen)."""
        ...

    async def save(self, projection: str, slices: SliceRange, changes: OffsetChanges) -> None:
        """Compare and set `changes` of the instance over `slices`."""
        ...

    async def commit(
        self,
        projection: str,
        slices: SliceRange,
        changes: OffsetChanges,
        write: Callable[[T_co], R] | None,
    ) -> R | None:
        """Compare and set `changes` and run `write` in one transaction (both commit or
        neither); return what `write` returned. After a conflict `write` does not run. If
        `write` raises, nothing is stored and its exception comes out as itself; it runs once
        per call."""
        ...

    async def migrate_read_model(
        self, projection: str, migrations: Sequence[Callable[[T_co], None]]
    ) -> None:
        """Run, in one transaction, the `migrations` the store has not run for `projection`
        (it keeps the read model's version): each runs once per store."""
        ...

    async def acquire_lease(
        self, projection: str, entity_type: str, slices: SliceRange, *, owner: str, duration: float
    ) -> Lease:
        """Take the lease of `projection` over `slices` for `duration` seconds, registering
        the projection; an expired lease of an overlapping range is taken over. Raises
        ProjectionLeaseHeld while another owner holds a live overlapping lease."""
        ...

    async def renew_lease(self, lease: Lease, duration: float) -> Lease:
        """Extend `lease` to `duration` seconds from now; ProjectionConflict if it was lost."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give `lease` up (no-op if it was lost)."""
        ...

    async def offsets(
        self, projection: str, slices: SliceRange | None = None
    ) -> dict[int, TimestampOffset]:
        """The stored offset of every slice of `projection` (in `slices`) that has one."""
        ...

    async def set_offset(
        self, projection: str, slices: SliceRange, offset: TimestampOffset
    ) -> None:
        """Resume every slice in `slices` from `offset`."""
        ...

    async def skip_event(self, projection: str, persistence_id: str, seq_nr: int) -> None:
        """Count an entity's events up to `seq_nr` as handled."""
        ...

    async def reset(
        self, projection: str, *, clear_read_model: Callable[[T_co], None] | None = None
    ) -> None:
        """Forget the offsets of `projection` (and run `clear_read_model` in the same
        transaction): it starts again from the first event."""
        ...


@runtime_checkable
class ConsumerFilterStore(Protocol):
    """Where a consumer keeps its filter of each stream id (SQLite, memory and PostgreSQL
    offset stores are ones): a `Filter`, stored as its JSON (`Filter.to_json`), keyed by the
    stream id. A stream id with no stored filter has none (None), which is not the same as a
    stored empty one: that stream id had a filter once (docs/filters.md, first sight)."""

    async def load_consumer_filter(self, stream_id: str) -> Filter | None:
        """The stored filter of `stream_id` (None: none was ever stored)."""
        ...

    async def update_consumer_filter(
        self, stream_id: str, update: FilterCriteriaUpdate
    ) -> tuple[Filter, Filter]:
        """Fold `update` into the stored filter of `stream_id` (none stored: the empty one),
        in one transaction, and return the filters before and after it."""
        ...

    async def save_consumer_filter(self, stream_id: str, filter: Filter) -> None:
        """Store `filter` as the filter of `stream_id`, replacing the one stored."""
        ...


@runtime_checkable
class HasOffsetStore(Protocol[T_co]):
    """A journal that keeps projection offsets itself (SQLite in its file, memory in memory):
    `serve_projection(journal, ...)` uses this store unless it is given another."""

    def offset_store(self) -> OffsetStore[T_co]:
        """The journal's offset store (the same one on every call)."""
        ...


class JournalWithOffsetStore(Journal, HasOffsetStore[T_co], Protocol[T_co]):
    """A journal with an offset store of its own: what `serve_projection(journal, ...)`
    takes without `offsets=`."""
