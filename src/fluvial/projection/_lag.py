"""`projection_lag`: how far each slice-range instance of a projection is behind its source.

The management API beside the offset store's: the store knows where an instance got to (its
stored offsets), only the source knows how far there is to go (its latest event timestamp:
the local journal's query, or the producer's `LatestEventTimestamp` over gRPC), so the lag
takes both, the way `serve_projection` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange
from fluvial.journal.api import Journal
from fluvial.projection._runner import Projection, is_source_provider, own_offset_store
from fluvial.projection._source import LocalJournalSources
from fluvial.projection.api import HasLatestEventTimestamp, OffsetStore, SourceProvider


@attrs.frozen(kw_only=True)
class InstanceLag:
    """How far one slice range of a projection is behind its source, in event time.

    - `offset_timestamp`: the newest of the range's stored slice offsets (the timestamp of
      the last event the instance's query handled and stored), None if none is stored yet;
    - `latest_timestamp`: the timestamp of the source's newest event of the projection's
      entity type (or stream) in the range, None if it has none.

    Timestamps are the source journal's microseconds (a gRPC source's are its producer's,
    which are also what the consumer's offsets store).
    """

    slices: SliceRange
    offset_timestamp: int | None
    latest_timestamp: int | None

    @property
    def lag_seconds(self) -> float | None:
        """`latest_timestamp - offset_timestamp` in seconds, never below 0: 0.0 when the
        source has no events (nothing to be behind) or the instance has reached its latest;
        None when the source has events and no offset is stored yet (the instance has
        handled none of them: its backlog is all of them)."""
        if self.latest_timestamp is None:
            return 0.0
        if self.offset_timestamp is None:
            return None
        return max(0, self.latest_timestamp - self.offset_timestamp) / 1_000_000


async def projection_lag(
    source: Journal | SourceProvider,
    projection: Projection[Any, Any],
    ranges: Iterable[SliceRange] = (SliceRange.all(),),
    *,
    offsets: OffsetStore[Any] | None = None,
) -> list[InstanceLag]:
    """The lag of `projection` over each slice range of `ranges` (default: one instance over
    all slices; `slice_ranges(n)` for n instances), in their order.

    `source` and `offsets` are what `serve_projection` runs the projection with: a journal
    (its `latest_event_timestamp` query) or a `SourceProvider` whose sources know their
    latest event timestamp (`HasLatestEventTimestamp`: the gRPC consumer's ask the producer),
    and the offset store (default: the journal's own, `HasOffsetStore`). It starts nothing
    and needs no running instance; a running one may move on while it reads.

    Raises UnknownProjection if the store does not know the projection, UsageError for a
    source that cannot tell its latest event timestamp (or a journal without an offset store
    of its own and no `offsets`), and the source's errors as themselves (a gRPC source's
    `GrpcDeadlineExceeded`, `GrpcUnavailable`).
    """
    store = offsets if offsets is not None else own_offset_store(source)
    provider = source if is_source_provider(source) else LocalJournalSources(source)
    lags: list[InstanceLag] = []
    for slices in ranges:
        instance_source = provider.source(projection.entity_type, slices, projection.source)
        if not isinstance(instance_source, HasLatestEventTimestamp):
            raise UsageError(
                f"projection_lag: the sources of {type(provider).__name__} cannot tell their "
                "latest event timestamp (a Source with latest_event_timestamp(), "
                "HasLatestEventTimestamp)"
            )
        stored = await store.offsets(projection.name, slices)
        latest = await instance_source.latest_event_timestamp()
        lags.append(
            InstanceLag(
                slices=slices,
                offset_timestamp=max((o.timestamp for o in stored.values()), default=None),
                latest_timestamp=latest,
            )
        )
    return lags
