"""The consumer's conversions between the wire's messages and the runner's values.

Outbound, `stream_init` says where a source resumes: the runner hands `Source.run` one offset
(the earliest of its slices', `OffsetTracker.resume_offset`), which the Init carries for every
slice of the range, its seen entities each under its own slice (the producer refuses an offset
naming another slice's entity). Inbound, nothing a producer sends is taken on trust:
`batch_of` decodes an `EventBatch` (`_batch_codec`) and checks that it names a path and that
its events are of the stream's slices, else `ProducerProtocolError`; `offset_after` is where
a query batch leaves the stream's resume offset, `progress_offset` where a `QueryProgress`
does; `check_replayed` checks a replay's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import DataError
from fluvial.core.ids import NUMBER_OF_SLICES, SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.projection.api import Batch

from ._batch_codec import decode_events
from ._proto.fluvial import v1 as pb

SERVICE: Final = "/fluvial.v1.EventProducerService"
STREAM_EVENTS: Final = f"{SERVICE}/StreamEvents"
LOAD_EVENT: Final = f"{SERVICE}/LoadEvent"
EVENT_TIMESTAMP: Final = f"{SERVICE}/EventTimestamp"
LATEST_EVENT_TIMESTAMP: Final = f"{SERVICE}/LatestEventTimestamp"
REPLAY: Final = f"{SERVICE}/Replay"

_PATHS: Final[dict[int, EnvelopeSource]] = {
    pb.EventPath.QUERY.value: EnvelopeSource.QUERY,
    pb.EventPath.LIVE.value: EnvelopeSource.LIVE,
    pb.EventPath.BACKTRACKING.value: EnvelopeSource.BACKTRACKING,
    pb.EventPath.REPLAY.value: EnvelopeSource.REPLAY,
}


class ProducerProtocolError(DataError):
    """The producer sent something the protocol does not allow (a batch of no known path, an
    event outside the stream's slice range, a batch before `StreamStarted`, a replay that
    does not move on): the consumer stops reading it and raises this (the projection runner
    restarts the instance with its backoff). The message says what was wrong."""


def stream_init(
    stream_id: str,
    slices: SliceRange,
    offset: TimestampOffset,
    filter: Sequence[pb.FilterCriterion] = (),
) -> pb.StreamInit:
    """The Init of a stream of `stream_id` over `slices` that resumes after `offset`, with
    the consumer's `filter` (criteria whose fold it is)."""
    offsets: list[pb.SliceOffset] = []
    if offset.timestamp > 0 or offset.seen:
        seen_by_slice: dict[int, dict[str, int]] = {}
        for persistence_id, seq_nr in offset.seen.items():
            seen_by_slice.setdefault(slice_for(persistence_id), {})[persistence_id] = seq_nr
        offsets = [
            pb.SliceOffset(
                slice=slice_, timestamp=offset.timestamp, seen=seen_by_slice.get(slice_, {})
            )
            for slice_ in slices
        ]
    return pb.StreamInit(
        stream_id=stream_id,
        slice_min=slices.min,
        slice_max=slices.max,
        offsets=offsets,
        filter=list(filter),
        # Payloads always: the runner takes a record without one from the query or the live
        # path as a placeholder, and loads lazily only what backtracking brings (which the
        # producer sends without payloads anyway).
        omit_payloads=False,
        # What went LIVE need not come again by QUERY (`_consumer_progress`).
        query_progress=True,
    )


def batch_of(batch: pb.EventBatch, slices: SliceRange) -> Batch:
    """The records of `batch` and their path, checked (see the module docstring)."""
    source = _PATHS.get(int(batch.path))
    if source is None:
        raise ProducerProtocolError(
            f"an event batch of no known path ({int(batch.path)}): EVENT_PATH_UNSPECIFIED or "
            "a path newer than this consumer"
        )
    records = decode_events(batch.events, encoding=int(batch.encoding))
    check_slices(records, slices)
    return records, source


def check_slices(records: Sequence[EventRecord], slices: SliceRange) -> None:
    """ProducerProtocolError naming the first of `records` (decoded by `decode_events`)
    outside `slices`."""
    low, high = slices.min, slices.max
    if low == 0 and high == NUMBER_OF_SLICES - 1:
        return  # every slice there is: `decode_events` checked each is one (0..1023)
    for record in records:
        if not low <= record.slice <= high:
            raise ProducerProtocolError(
                f"{record.persistence_id} seq nr {record.seq_nr} is of slice {record.slice}, "
                f"outside the stream's slice range {slices}"
            )


def check_replayed(
    records: Sequence[EventRecord], persistence_id: str, first: int, last: int
) -> None:
    """ProducerProtocolError naming the first of `records` (an answer to a replay of
    `persistence_id` seq nrs `first..last`) that is of another entity, outside that range, or
    not after the one before it: an answer adds no event twice and none out of order."""
    previous = first - 1
    for record in records:
        if record.persistence_id != persistence_id or not previous < record.seq_nr <= last:
            raise ProducerProtocolError(
                f"a replay of {persistence_id} seq nrs {first}..{last} answered "
                f"{record.persistence_id} seq nr {record.seq_nr}"
                + (f" after seq nr {previous}" if previous >= first else "")
            )
        previous = record.seq_nr


def offset_after(offset: TimestampOffset, records: Sequence[EventRecord]) -> TimestampOffset:
    """`offset` advanced over `records` (a query batch: in timestamp order), as
    `TimestampOffset.advanced_to` one record after the other would leave it."""
    if not records:
        return offset
    last = records[-1].timestamp
    if last < offset.timestamp:
        raise ProducerProtocolError(
            f"a query batch ends at timestamp {last}, behind the stream's offset "
            f"{offset.timestamp}: the query is in timestamp order"
        )
    return offset.advanced_over(records)


def progress_offset(offset: TimestampOffset, progress: pb.QueryProgress) -> TimestampOffset:
    """Where a `QueryProgress` moves the stream's resume offset `offset`: to its own."""
    if progress.timestamp < offset.timestamp:
        raise ProducerProtocolError(
            f"a query progress to timestamp {progress.timestamp}, behind the stream's offset "
            f"{offset.timestamp}: the query is in timestamp order"
        )
    return TimestampOffset(progress.timestamp, dict(progress.seen))
