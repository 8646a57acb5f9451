"""Projections: handlers over a source of events, offsets in a store (docs/projections.md,
docs/seams.md). The modules here are private, except `api` (the seams' protocols); these are
the public names."""

from fluvial.projection._handlers import AtLeastOnce as AtLeastOnce
from fluvial.projection._handlers import Backoff as Backoff
from fluvial.projection._handlers import ExactlyOnce as ExactlyOnce
from fluvial.projection._handlers import GroupedAtLeastOnce as GroupedAtLeastOnce
from fluvial.projection._handlers import GroupedExactlyOnce as GroupedExactlyOnce
from fluvial.projection._handlers import RecoveryStrategy as RecoveryStrategy
from fluvial.projection._lag import InstanceLag as InstanceLag
from fluvial.projection._lag import projection_lag as projection_lag
from fluvial.projection._runner import Projection as Projection
from fluvial.projection._runner import serve_projection as serve_projection
from fluvial.projection._shared import serve_shared_projection as serve_shared_projection
from fluvial.projection._source import LocalJournalSources as LocalJournalSources
from fluvial.projection._source_settings import SourceSettings as SourceSettings
from fluvial.projection.api import Batch as Batch
from fluvial.projection.api import ConsumerFilterStore as ConsumerFilterStore
from fluvial.projection.api import HasLatestEventTimestamp as HasLatestEventTimestamp
from fluvial.projection.api import HasOffsetStore as HasOffsetStore
from fluvial.projection.api import JournalWithOffsetStore as JournalWithOffsetStore
from fluvial.projection.api import OffsetStore as OffsetStore
from fluvial.projection.api import Source as Source
from fluvial.projection.api import SourceProvider as SourceProvider

__all__ = [
    "AtLeastOnce",
    "Backoff",
    "Batch",
    "ConsumerFilterStore",
    "ExactlyOnce",
    "GroupedAtLeastOnce",
    "GroupedExactlyOnce",
    "HasLatestEventTimestamp",
    "HasOffsetStore",
    "InstanceLag",
    "JournalWithOffsetStore",
    "LocalJournalSources",
    "OffsetStore",
    "Projection",
    "RecoveryStrategy",
    "Source",
    "SourceProvider",
    "SourceSettings",
    "projection_lag",
    "serve_projection",
    "serve_shared_projection",
]
