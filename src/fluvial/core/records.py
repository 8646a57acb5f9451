"""What journals store and return: serialized events and snapshots, and typed envelopes.

Journals never see user classes: they move `EventRecord`s and `SnapshotRecord`s, whose payloads
the serializer registry encodes and decodes in the shell. `EventEnvelope` is the decoded form
that projections and replication handlers receive.

They are frozen msgspec Structs rather than attrs classes: every command and every projected
event builds some, and a Struct is built ~10x faster (0.13 us against 1.3 us on the benchmark
machine). Records hold only strings, numbers and bytes, so they are also left out of the cyclic
garbage collector (`gc=False`), which otherwise walks every record in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import msgspec

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import UsageError
from fluvial.core.ids import InvalidPersistenceId, ReplicatedPersistenceId, slice_for
from fluvial.core.replication_metadata import ReplicationMetadata
from fluvial.core.serialization import SerializedPayload

if TYPE_CHECKING:
    from fluvial.core.offsets import TimestampOffset

E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)

# The highest seq nr a journal stores: SQLite's INTEGER (and PostgreSQL's BIGINT) is signed 64-bit.
MAX_SEQ_NR = 2**63 - 1
# The latest timestamp (microseconds since the epoch) a journal stores, for the same reason.
MAX_TIMESTAMP = 2**63 - 1


class EventRecord(msgspec.Struct, frozen=True, gc=False):
    """One stored event of one entity.

    `timestamp` (microseconds since the epoch) is the journal's `db_timestamp`: assigned by
    the journal that stores the event, when it commits it; records built for `Journal.append`
    leave it 0. `write_timestamp` is when the event was first written, at its origin: the same
    as `timestamp` for events written here, kept from elsewhere for events another journal
    wrote first (`WriteFromElsewhere`); 0 in a record not stored yet means "now, here".
    `replication` is set for the events of a replicated entity (None for every other).
    `payload` is None for an event stored without one (a placeholder of an event filtered out
    of a stream) and in the records of a query that leaves payloads out.
    """

    persistence_id: str
    seq_nr: int
    entity_type: str
    slice: int
    payload: SerializedPayload | None
    tags: frozenset[str] = frozenset()
    timestamp: int = 0
    write_timestamp: int = 0
    replication: ReplicationMetadata | None = None


class SnapshotRecord(msgspec.Struct, frozen=True, gc=False):
    """A stored state of one entity after its event `seq_nr`.

    `timestamp` is when the journal stored the snapshot. `event_timestamp` and `tags` are the
    `timestamp` and tags of the event `seq_nr` as the journal holds it (filled in by the
    snapshot store when it saves the snapshot), so that a stream can start from the snapshot
    in that event's place: a consumer's offset after it is the event's. Both are left as the
    record gives them (0 and none by default) when the journal holds no such event.
    """

    persistence_id: str
    seq_nr: int
    entity_type: str
    slice: int
    payload: SerializedPayload
    timestamp: int = 0
    event_timestamp: int = 0
    tags: frozenset[str] = frozenset()


class EventEnvelope(msgspec.Struct, Generic[E_co], frozen=True):
    """A decoded event with its place in the journal, as handlers receive it.

    `persistence_id` is `"{entity_type}|{entity_id}"` (see `PersistenceId`); `entity_id` gives
    the entity's own id without parsing. `timestamp` is the journal's commit time in
    microseconds since the epoch (its `db_timestamp`); `slice` is `slice_for(persistence_id)`.
    `source` is the path of the projection's source that delivered it (`REPLAY` for the events
    replayed to fill a gap); `offset` its position in the events-by-slices order. As in its
    `EventRecord`, `write_timestamp` is when it was first written at its origin and
    `replication` is set for the events of a replicated entity. Build one from a record with
    `EventEnvelope.of`.
    """

    persistence_id: str
    seq_nr: int
    entity_type: str
    slice: int
    timestamp: int
    event: E_co
    tags: frozenset[str] = frozenset()
    source: EnvelopeSource = EnvelopeSource.QUERY
    write_timestamp: int = 0
    replication: ReplicationMetadata | None = None

    @classmethod
    def of(cls, record: EventRecord, event: E, source: EnvelopeSource) -> EventEnvelope[E]:
        """The envelope of `record`, whose payload decodes to `event`, delivered by `source`."""
        return EventEnvelope(
            record.persistence_id,
            record.seq_nr,
            record.entity_type,
            record.slice,
            record.timestamp,
            event,
            record.tags,
            source,
            record.write_timestamp,
            record.replication,
        )

    @property
    def entity_id(self) -> str:
        """The entity's id, parsed from the persistence id without building one: what follows
        the first ``|``, and for a replicated entity's event (`replication` set) what lies
        between the first and the last ``|`` (`ReplicatedPersistenceId`), so that every
        replica's copy of an entity gives the same id."""
        rest = self.persistence_id.partition("|")[2]
        return rest if self.replication is None else rest.rpartition("|")[0]

    @property
    def offset(self) -> TimestampOffset:
        """The offset just after this event: its timestamp, with its seq nr seen (built on
        each access)."""
        from fluvial.core.offsets import TimestampOffset  # offsets imports this module

        return TimestampOffset(self.timestamp, {self.persistence_id: self.seq_nr})


class InvalidAppend(UsageError):
    """An append whose events are not one entity's consecutive sequence numbers within
    1..MAX_SEQ_NR."""


def check_append_batch(events: Sequence[EventRecord]) -> None:
    """Raise InvalidAppend unless `events` are one entity's consecutive seq nrs within
    1..MAX_SEQ_NR.

    Whether they follow the entity's stored events is the journal's to check (`JournalGap`).
    """
    if not events:
        return
    first = events[0]
    if first.seq_nr < 1:
        raise InvalidAppend(f"seq nrs start at 1: {first.persistence_id} seq nr {first.seq_nr}")
    if events[-1].seq_nr > MAX_SEQ_NR:
        raise InvalidAppend(
            f"seq nrs end at {MAX_SEQ_NR}: {first.persistence_id} seq nr {events[-1].seq_nr}"
        )
    for offset, event in enumerate(events):
        if event.persistence_id != first.persistence_id:
            raise InvalidAppend(
                "one append holds one entity's events: "
                f"{first.persistence_id} and {event.persistence_id}"
            )
        if event.seq_nr != first.seq_nr + offset:
            raise InvalidAppend(
                f"seq nrs of {first.persistence_id} must be consecutive: "
                f"{[e.seq_nr for e in events]}"
            )
        if event.replication is not None:
            check_replicated_id(event)


def check_replicated_id(event: EventRecord) -> None:
    """Raise InvalidAppend if `event` carries replication metadata but its persistence id is
    not a replicated one (`type|id|replica`): the events of a replicated entity, and only
    those, have metadata, and `EventEnvelope.entity_id` reads the id by that rule."""
    if event.replication is None:
        return
    try:
        ReplicatedPersistenceId.parse(event.persistence_id)
    except InvalidPersistenceId:
        raise InvalidAppend(
            f"{event.persistence_id} seq nr {event.seq_nr} has replication metadata, but its "
            "persistence id is not a replicated entity's (type|id|replica)"
        ) from None


def check_from_elsewhere(events: Sequence[EventRecord]) -> None:
    """Raise InvalidAppend unless each of `events` has a seq nr within 1..MAX_SEQ_NR, a write
    timestamp, and the entity type and slice of its persistence id: what `write_from_elsewhere`
    needs of events another journal wrote (they come from the network, so nothing of them is
    taken on trust: a wrong slice would hide the event from every slice query that should
    find it)."""
    for event in events:
        entity_type = event.persistence_id.partition("|")[0]
        if event.entity_type != entity_type:
            raise InvalidAppend(
                f"{event.persistence_id} seq nr {event.seq_nr} has entity type "
                f"{event.entity_type!r}, not its persistence id's {entity_type!r}"
            )
        if event.slice != slice_for(event.persistence_id):
            raise InvalidAppend(
                f"{event.persistence_id} seq nr {event.seq_nr} has slice {event.slice}, not "
                f"its persistence id's {slice_for(event.persistence_id)}"
            )
        if not 1 <= event.seq_nr <= MAX_SEQ_NR:
            raise InvalidAppend(
                f"seq nrs are within 1..{MAX_SEQ_NR}: {event.persistence_id} seq nr {event.seq_nr}"
            )
        check_replicated_id(event)
        if event.write_timestamp < 1:
            raise InvalidAppend(
                f"an event from elsewhere keeps its origin's write timestamp: "
                f"{event.persistence_id} seq nr {event.seq_nr} has {event.write_timestamp}"
            )
