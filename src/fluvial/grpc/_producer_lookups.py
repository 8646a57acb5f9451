"""The producer's answers to a consumer's questions beside its stream, without gRPC.

A replay of one entity between two seq nrs (the request/response call, and the in-stream
replays the stream core admits), one event with its payload (for a record that came
without), one event's timestamp, and a slice range's latest event timestamp: each in its
public form (`PublicForm`: the producer's filter and transformation applied, placeholders
for what they drop), and each only for an entity of the stream's own entity type (a
`RemoteStreamError` otherwise: a producer never hands out another entity type's events,
whatever it is asked).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.ids import SliceRange
from fluvial.core.records import EventRecord
from fluvial.core.replication_stream import check_event_of_stream, check_seq_nr
from fluvial.core.replication_stream_errors import RefusalReason, RemoteStreamError
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc._producer_source import EventProducerSource
from fluvial.grpc._producer_stream import PublicForm
from fluvial.journal.api import Journal
from fluvial.journal.queries import events_by_persistence_id


async def replay_batches(
    journal: Journal,
    source: EventProducerSource[Any, Any],
    serializers: SerializerRegistry,
    persistence_id: str,
    from_seq_nr: int,
    to_seq_nr: int,
    *,
    batch_size: int = 500,
    slices: SliceRange | None = None,
) -> AsyncIterator[list[EventRecord]]:
    """The public form of `persistence_id`'s events `from_seq_nr..to_seq_nr`, in seq nr
    order, in batches of at most `batch_size` (fewer events if the journal has fewer), read
    a page at a time: an in-stream replay sends each batch as it comes.

    RemoteStreamError if the entity is not of `source`'s entity type (or outside `slices`,
    for a stream's replay) or the seq nrs are not a range within 1..MAX_SEQ_NR."""
    check_request(source, persistence_id, from_seq_nr, "replay", slices)
    check_seq_nr("replay", persistence_id, to_seq_nr)
    if to_seq_nr < from_seq_nr:
        raise RemoteStreamError(
            RefusalReason.SEQ_NR_RANGE,
            f"replay: seq nrs {from_seq_nr}..{to_seq_nr} of {persistence_id} are inverted",
        )
    public = PublicForm(source, serializers)
    batch: list[EventRecord] = []
    async for record in events_by_persistence_id(
        journal, persistence_id, from_seq_nr, to_seq_nr, page_size=batch_size
    ):
        batch.append(public.of(record, EnvelopeSource.REPLAY))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


async def replay_events(
    journal: Journal,
    source: EventProducerSource[Any, Any],
    serializers: SerializerRegistry,
    persistence_id: str,
    from_seq_nr: int,
    to_seq_nr: int,
) -> list[EventRecord]:
    """Every event of `replay_batches`, in one list (the request/response replay)."""
    events: list[EventRecord] = []
    async for batch in replay_batches(
        journal, source, serializers, persistence_id, from_seq_nr, to_seq_nr
    ):
        events.extend(batch)
    return events


async def load_event(
    journal: Journal,
    source: EventProducerSource[Any, Any],
    serializers: SerializerRegistry,
    persistence_id: str,
    seq_nr: int,
) -> EventRecord | None:
    """The public form of one event, with its payload (a placeholder if the producer's
    filter or transformation drops it); None if the journal does not have it.
    RemoteStreamError as for `replay_batches`."""
    check_request(source, persistence_id, seq_nr, "load event")
    record = await journal.load_event(persistence_id, seq_nr)
    if record is None:
        return None
    # The request does not say which path delivered the record the consumer is loading (a
    # backtracking record, or one of a stream that omits payloads): the transformation sees
    # QUERY, the path of the stream's own events and `EventEnvelope.source`'s default.
    return PublicForm(source, serializers).of(record, EnvelopeSource.QUERY)


async def event_timestamp(
    journal: Journal,
    source: EventProducerSource[Any, Any],
    persistence_id: str,
    seq_nr: int,
) -> int | None:
    """The journal timestamp of one event (None if not stored): what the transformation
    does not change. RemoteStreamError as for `replay_batches`."""
    check_request(source, persistence_id, seq_nr, "event timestamp")
    # The payload comes along: the journal protocol has no lookup by persistence id without
    # payloads (only `read_events_by_slices(with_payloads=False)`, by timestamp).
    record = await journal.load_event(persistence_id, seq_nr)
    return None if record is None else record.timestamp


async def latest_event_timestamp(
    journal: Journal, source: EventProducerSource[Any, Any], slices: SliceRange
) -> int | None:
    """The journal timestamp of the newest event of `source`'s entity type in `slices` (None
    if it has none), from the journal's own query (`Journal.latest_event_timestamp`), as the
    stream sends it: the filter and transformation change payloads, never a timestamp (a
    dropped event goes as a placeholder at its own timestamp)."""
    return await journal.latest_event_timestamp(source.entity_type, slices)


def check_request(
    source: EventProducerSource[Any, Any],
    persistence_id: str,
    seq_nr: int,
    what: str,
    slices: SliceRange | None = None,
) -> None:
    """Raise RemoteStreamError unless `persistence_id` is of `source`'s entity type (and in
    `slices`, when given) and `seq_nr` within 1..MAX_SEQ_NR."""
    check_event_of_stream(what, source.entity_type, slices or SliceRange.all(), persistence_id)
    check_seq_nr(what, persistence_id, seq_nr)
