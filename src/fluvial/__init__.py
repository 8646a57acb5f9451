"""fluvial: typed, trio-native event sourcing with an embedded SQLite journal.

The PostgreSQL backend's names live in `fluvial.journal.postgres`, not here: importing it loads
psycopg (~80 ms), which a program on the embedded default never needs."""

from fluvial.core.behavior import Command as Command
from fluvial.core.behavior import CommandOf as CommandOf
from fluvial.core.behavior import CommandRejected as CommandRejected
from fluvial.core.behavior import Effect as Effect
from fluvial.core.behavior import EntityHandlers as EntityHandlers
from fluvial.core.behavior import EventSourcedBehavior as EventSourcedBehavior
from fluvial.core.behavior import SnapshotPolicy as SnapshotPolicy
from fluvial.core.entity_context import EntityContext as EntityContext
from fluvial.core.envelope_source import EnvelopeSource as EnvelopeSource
from fluvial.core.errors import DataError as DataError
from fluvial.core.errors import FluvialError as FluvialError
from fluvial.core.errors import UsageError as UsageError
from fluvial.core.filters import EntityReplay as EntityReplay
from fluvial.core.filters import Filter as Filter
from fluvial.core.filters import FilterCriteriaUpdate as FilterCriteriaUpdate
from fluvial.core.filters import FilterVerdict as FilterVerdict
from fluvial.core.filters import evaluate_filters as evaluate_filters
from fluvial.core.filters_criteria import ExcludeEntityIds as ExcludeEntityIds
from fluvial.core.filters_criteria import ExcludeRegexEntityIds as ExcludeRegexEntityIds
from fluvial.core.filters_criteria import ExcludeTags as ExcludeTags
from fluvial.core.filters_criteria import FilterCriterion as FilterCriterion
from fluvial.core.filters_criteria import IncludeEntityIds as IncludeEntityIds
from fluvial.core.filters_criteria import IncludeRegexEntityIds as IncludeRegexEntityIds
from fluvial.core.filters_criteria import IncludeTags as IncludeTags
from fluvial.core.filters_criteria import IncludeTopics as IncludeTopics
from fluvial.core.filters_criteria import InvalidFilterCriterion as InvalidFilterCriterion
from fluvial.core.filters_criteria import RemoveExcludeEntityIds as RemoveExcludeEntityIds
from fluvial.core.filters_criteria import RemoveExcludeRegexEntityIds as RemoveExcludeRegexEntityIds
from fluvial.core.filters_criteria import RemoveExcludeTags as RemoveExcludeTags
from fluvial.core.filters_criteria import RemoveIncludeEntityIds as RemoveIncludeEntityIds
from fluvial.core.filters_criteria import RemoveIncludeRegexEntityIds as RemoveIncludeRegexEntityIds
from fluvial.core.filters_criteria import RemoveIncludeTags as RemoveIncludeTags
from fluvial.core.filters_criteria import RemoveIncludeTopics as RemoveIncludeTopics
from fluvial.core.filters_stored import InvalidFilterData as InvalidFilterData
from fluvial.core.first_sight import FirstSight as FirstSight
from fluvial.core.ids import InvalidPersistenceId as InvalidPersistenceId
from fluvial.core.ids import InvalidSliceRange as InvalidSliceRange
from fluvial.core.ids import PersistenceId as PersistenceId
from fluvial.core.ids import ReplicatedPersistenceId as ReplicatedPersistenceId
from fluvial.core.ids import SliceRange as SliceRange
from fluvial.core.ids import slice_for as slice_for
from fluvial.core.ids import slice_ranges as slice_ranges
from fluvial.core.leases import Lease as Lease
from fluvial.core.offsets import TimestampOffset as TimestampOffset
from fluvial.core.projection_errors import ProjectionConflict as ProjectionConflict
from fluvial.core.projection_errors import ProjectionFailed as ProjectionFailed
from fluvial.core.projection_errors import ProjectionLeaseHeld as ProjectionLeaseHeld
from fluvial.core.projection_errors import ReadModelClearFailed as ReadModelClearFailed
from fluvial.core.projection_errors import ReadModelMigrationFailed as ReadModelMigrationFailed
from fluvial.core.projection_errors import UnknownEvent as UnknownEvent
from fluvial.core.projection_errors import UnknownProjection as UnknownProjection
from fluvial.core.records import EventEnvelope as EventEnvelope
from fluvial.core.records import EventRecord as EventRecord
from fluvial.core.records import InvalidAppend as InvalidAppend
from fluvial.core.records import SnapshotRecord as SnapshotRecord
from fluvial.core.replication_metadata import (
    InvalidReplicationMetadata as InvalidReplicationMetadata,
)
from fluvial.core.replication_metadata import ReplicationMetadata as ReplicationMetadata
from fluvial.core.replication_metadata import VersionOrder as VersionOrder
from fluvial.core.replication_metadata import VersionVector as VersionVector
from fluvial.core.serialization import DuplicateManifest as DuplicateManifest
from fluvial.core.serialization import PayloadDecodeError as PayloadDecodeError
from fluvial.core.serialization import PayloadEncodeError as PayloadEncodeError
from fluvial.core.serialization import SerializerRegistry as SerializerRegistry
from fluvial.core.serialization import UnknownManifest as UnknownManifest
from fluvial.core.serialization import UnregisteredType as UnregisteredType
from fluvial.core.serialization import UnsupportedType as UnsupportedType
from fluvial.core.topics import TOPIC_TAG_PREFIX as TOPIC_TAG_PREFIX
from fluvial.entity import CommandFailed as CommandFailed
from fluvial.entity import CommandTypeError as CommandTypeError
from fluvial.entity import Entities as Entities
from fluvial.entity import EntityError as EntityError
from fluvial.entity import EntityRef as EntityRef
from fluvial.entity import EntityStopped as EntityStopped
from fluvial.entity import MissingReply as MissingReply
from fluvial.entity import UnhandledCommand as UnhandledCommand
from fluvial.entity import UnknownEntityType as UnknownEntityType
from fluvial.entity import open_entities as open_entities
from fluvial.journal.api import EventAlreadyStored as EventAlreadyStored
from fluvial.journal.api import EventGap as EventGap
from fluvial.journal.api import EventStored as EventStored
from fluvial.journal.api import HasConcurrentWriters as HasConcurrentWriters
from fluvial.journal.api import Journal as Journal
from fluvial.journal.api import JournalClosed as JournalClosed
from fluvial.journal.api import JournalConflict as JournalConflict
from fluvial.journal.api import JournalError as JournalError
from fluvial.journal.api import JournalGap as JournalGap
from fluvial.journal.api import SnapshotStore as SnapshotStore
from fluvial.journal.api import WriteFromElsewhere as WriteFromElsewhere
from fluvial.journal.api import WriteFromElsewhereResult as WriteFromElsewhereResult
from fluvial.journal.memory import MemoryJournal as MemoryJournal
from fluvial.journal.memory import MemoryOffsetStore as MemoryOffsetStore
from fluvial.journal.memory import MemoryTransaction as MemoryTransaction
from fluvial.journal.queries import current_events_by_slices as current_events_by_slices
from fluvial.journal.queries import current_snapshots_by_slices as current_snapshots_by_slices
from fluvial.journal.queries import events_by_persistence_id as events_by_persistence_id
from fluvial.journal.queries import events_by_slices as events_by_slices
from fluvial.journal.sqlite import JournalBusy as JournalBusy
from fluvial.journal.sqlite import JournalCannotOpen as JournalCannotOpen
from fluvial.journal.sqlite import JournalCorrupt as JournalCorrupt
from fluvial.journal.sqlite import JournalFileError as JournalFileError
from fluvial.journal.sqlite import JournalFull as JournalFull
from fluvial.journal.sqlite import JournalReadOnly as JournalReadOnly
from fluvial.journal.sqlite import NotAJournal as NotAJournal
from fluvial.journal.sqlite import SchemaVersionTooNew as SchemaVersionTooNew
from fluvial.journal.sqlite import SqliteJournal as SqliteJournal
from fluvial.journal.sqlite import SqliteOffsetStore as SqliteOffsetStore
from fluvial.journal.sqlite import WriteTransaction as WriteTransaction
from fluvial.journal.sqlite import open_sqlite_journal as open_sqlite_journal
from fluvial.projection import AtLeastOnce as AtLeastOnce
from fluvial.projection import Backoff as Backoff
from fluvial.projection import ExactlyOnce as ExactlyOnce
from fluvial.projection import GroupedAtLeastOnce as GroupedAtLeastOnce
from fluvial.projection import GroupedExactlyOnce as GroupedExactlyOnce
from fluvial.projection import HasLatestEventTimestamp as HasLatestEventTimestamp
from fluvial.projection import HasOffsetStore as HasOffsetStore
from fluvial.projection import InstanceLag as InstanceLag
from fluvial.projection import LocalJournalSources as LocalJournalSources
from fluvial.projection import OffsetStore as OffsetStore
from fluvial.projection import Projection as Projection
from fluvial.projection import RecoveryStrategy as RecoveryStrategy
from fluvial.projection import Source as Source
from fluvial.projection import SourceProvider as SourceProvider
from fluvial.projection import SourceSettings as SourceSettings
from fluvial.projection import projection_lag as projection_lag
from fluvial.projection import serve_projection as serve_projection
from fluvial.projection import serve_shared_projection as serve_shared_projection

__all__ = [
    "TOPIC_TAG_PREFIX",
    "AtLeastOnce",
    "Backoff",
    "Command",
    "CommandFailed",
    "CommandOf",
    "CommandRejected",
    "CommandTypeError",
    "DataError",
    "DuplicateManifest",
    "Effect",
    "Entities",
    "EntityContext",
    "EntityError",
    "EntityHandlers",
    "EntityRef",
    "EntityReplay",
    "EntityStopped",
    "EnvelopeSource",
    "EventAlreadyStored",
    "EventEnvelope",
    "EventGap",
    "EventRecord",
    "EventSourcedBehavior",
    "EventStored",
    "ExactlyOnce",
    "ExcludeEntityIds",
    "ExcludeRegexEntityIds",
    "ExcludeTags",
    "Filter",
    "FilterCriteriaUpdate",
    "FilterCriterion",
    "FilterVerdict",
    "FirstSight",
    "FluvialError",
    "GroupedAtLeastOnce",
    "GroupedExactlyOnce",
    "HasConcurrentWriters",
    "HasLatestEventTimestamp",
    "HasOffsetStore",
    "IncludeEntityIds",
    "IncludeRegexEntityIds",
    "IncludeTags",
    "IncludeTopics",
    "InstanceLag",
    "InvalidAppend",
    "InvalidFilterCriterion",
    "InvalidFilterData",
    "InvalidPersistenceId",
    "InvalidReplicationMetadata",
    "InvalidSliceRange",
    "Journal",
    "JournalBusy",
    "JournalCannotOpen",
    "JournalClosed",
    "JournalConflict",
    "JournalCorrupt",
    "JournalError",
    "JournalFileError",
    "JournalFull",
    "JournalGap",
    "JournalReadOnly",
    "Lease",
    "LocalJournalSources",
    "MemoryJournal",
    "MemoryOffsetStore",
    "MemoryTransaction",
    "MissingReply",
    "NotAJournal",
    "OffsetStore",
    "PayloadDecodeError",
    "PayloadEncodeError",
    "PersistenceId",
    "Projection",
    "ProjectionConflict",
    "ProjectionFailed",
    "ProjectionLeaseHeld",
    "ReadModelClearFailed",
    "ReadModelMigrationFailed",
    "RecoveryStrategy",
    "RemoveExcludeEntityIds",
    "RemoveExcludeRegexEntityIds",
    "RemoveExcludeTags",
    "RemoveIncludeEntityIds",
    "RemoveIncludeRegexEntityIds",
    "RemoveIncludeTags",
    "RemoveIncludeTopics",
    "ReplicatedPersistenceId",
    "ReplicationMetadata",
    "SchemaVersionTooNew",
    "SerializerRegistry",
    "SliceRange",
    "SnapshotPolicy",
    "SnapshotRecord",
    "SnapshotStore",
    "Source",
    "SourceProvider",
    "SourceSettings",
    "SqliteJournal",
    "SqliteOffsetStore",
    "TimestampOffset",
    "UnhandledCommand",
    "UnknownEntityType",
    "UnknownEvent",
    "UnknownManifest",
    "UnknownProjection",
    "UnregisteredType",
    "UnsupportedType",
    "UsageError",
    "VersionOrder",
    "VersionVector",
    "WriteFromElsewhere",
    "WriteFromElsewhereResult",
    "WriteTransaction",
    "current_events_by_slices",
    "current_snapshots_by_slices",
    "evaluate_filters",
    "events_by_persistence_id",
    "events_by_slices",
    "open_entities",
    "open_sqlite_journal",
    "projection_lag",
    "serve_projection",
    "serve_shared_projection",
    "slice_for",
    "slice_ranges",
]
