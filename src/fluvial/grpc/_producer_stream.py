"""The producer's side of one replication stream, without gRPC: journal in, batches out.

`run_producer_stream` reads the journal through the seams (`LocalJournalSource`: the query
from the consumer's offsets, the live path right after commit, the backtracking query), turns
each record into its public form (`EventProducerSource`: the producer's filter and
transformation, placeholders for what they drop), and sends bounded batches,
`(records, EnvelopeSource)`, to a trio memory channel, which the transport encodes and sends.

Backpressure: the channel is the caller's and bounded; when it is full this function waits,
and so does the query behind it (it reads its next page only once this one is taken). The
live path never blocks the journal: a subscription holds at most `SourceSettings.live_buffer`
events and drops the rest, which the query delivers. So a stream holds at most about
`page_size + live_buffer + batch_size` records whatever its consumer does, and a slow
consumer slows only its own stream.

Batching: records of one path are sent in order, in batches of at most `batch_size`; a
batch smaller than that waits at most `batch_delay` seconds for more of the same path
(records already waiting are taken at once).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import msgspec
import trio

from fluvial._wakeup import send_eagerly
from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import UsageError
from fluvial.core.first_sight import FirstSight
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.replication_stream_messages import ValidInit
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc._idle import handle_until_idle
from fluvial.grpc._producer_source import EventProducerSource
from fluvial.journal.api import Journal
from fluvial.nursery_errors import open_service_nursery
from fluvial.projection._source import LocalJournalSource
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import Batch

QUERY_IN_COMMIT_ORDER = FirstSight.QUERY_IN_COMMIT_ORDER


@attrs.frozen(kw_only=True)
class ProducerStreamSettings:
    """How a producer stream reads and batches: at most `batch_size` records a batch; a
    smaller batch waits at most `batch_delay` seconds for more; `source` says how the
    journal is read (page size, live path and its buffer, backtracking, `follow_delay`).

    `progress_delay`: to a consumer that understands it, the query's copy of an event the
    stream sent by LIVE already is not sent again; the consumer learns how far the query has
    come from a `QueryProgress`, sent this many seconds after the query read the first
    event it left out (docs/wire-protocol.md). Longer: fewer messages and fewer offset
    commits in the consumer; a reconnecting consumer then resumes up to that much further
    behind (and drops what comes again by seq nr)."""

    batch_size: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    batch_delay: float = attrs.field(default=0.001, validator=attrs.validators.ge(0.0))
    progress_delay: float = attrs.field(default=0.1, validator=attrs.validators.ge(0.0))
    source: SourceSettings = attrs.field(factory=SourceSettings)


async def run_producer_stream(
    journal: Journal,
    source: EventProducerSource[Any, Any],
    init: ValidInit[Any],
    serializers: SerializerRegistry,
    send: trio.MemorySendChannel[Batch],
    *,
    settings: ProducerStreamSettings | None = None,
    started: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send the public form of `source`'s events after `init`'s offsets to `send`, catching
    up and then following, until cancelled (see the module docstring).

    `serializers` decodes the stored (internal) events. Start it with `nursery.start`: it is
    started once events committed after that will reach `send`; `started()`, if given, is
    awaited then, before that and before any batch goes to `send` (the transport sends its
    StreamStarted there, into the channel the batches take). A read error, an event that
    cannot be decoded, or an exception of the transformation or the filter ends it, raised
    as itself (a closed `send`: `trio.BrokenResourceError`). UsageError if `init` is not of
    `source`'s stream."""
    if (init.stream_id, init.entity_type) != (source.stream_id, source.entity_type):
        raise UsageError(
            f"the Init of stream {init.stream_id!r} ({init.entity_type}) cannot run on the "
            f"source of stream {source.stream_id!r} ({source.entity_type})"
        )
    settings = settings or ProducerStreamSettings()
    local = LocalJournalSource(journal, source.entity_type, init.slices, settings.source)
    public_form = PublicForm(source, serializers, with_payloads=init.with_payloads)
    # The query starts at the earliest slice offset; what later slices' offsets have seen
    # already need not travel again (the consumer would drop it by seq nr). Only where
    # timestamps are commit order: with concurrent writers an event behind a slice's offset
    # may have committed after the consumer passed its timestamp, unseen.
    seen_until = init.seen_until() if local.first_sight is QUERY_IN_COMMIT_ORDER else 0

    def publish(records: Sequence[EventRecord], path: EnvelopeSource) -> list[EventRecord]:
        unseen = [r for r in records if r.timestamp > seen_until or not init.has_seen(r)]
        return public_form(unseen, path)

    # Unbuffered: the source's next page waits until this one is taken.
    records_in, records_out = trio.open_memory_channel[Batch](0)
    async with open_service_nursery() as nursery:
        await nursery.start(local.run, init.resume_offset(), records_in)
        if started is not None:
            await started()
        task_status.started()
        await _send_batches(records_out, send, publish, settings)


class PublicForm:
    """Turns stored records into what a stream sends: the public event's payload, or a
    placeholder (no payload) for an event the producer's filter or transformation drops;
    without payloads altogether when the consumer asked for none."""

    def __init__(
        self,
        source: EventProducerSource[Any, Any],
        serializers: SerializerRegistry,
        *,
        with_payloads: bool = True,
    ) -> None:
        self.source = source
        self.serializers = serializers
        self.with_payloads = with_payloads

    def __call__(self, records: Sequence[EventRecord], path: EnvelopeSource) -> list[EventRecord]:
        """The public form of `records`, delivered by `path`, one for one and in order."""
        if not self.with_payloads:
            return [_placeholder(r) if r.payload is not None else r for r in records]
        if not self.source.decodes:
            return list(records)
        return [self.of(record, path) for record in records]

    def of(self, record: EventRecord, path: EnvelopeSource) -> EventRecord:
        """The public form of one `record` (with its payload, if the consumer wants them)."""
        if record.payload is None:  # a stored placeholder, or read without payload
            return record
        source = self.source
        if not source.decodes:
            return record
        event = self.serializers.decode(
            record.payload, persistence_id=record.persistence_id, seq_nr=record.seq_nr
        )
        envelope = EventEnvelope.of(record, event, path)
        if not source.filter(envelope):
            return _placeholder(record)
        if source.transformation is None:
            return record
        public = source.transformation(envelope)
        if public is None:
            return _placeholder(record)
        return msgspec.structs.replace(record, payload=source.serializers.encode(public))


def _placeholder(record: EventRecord) -> EventRecord:
    return msgspec.structs.replace(record, payload=None)


async def _send_batches(
    receive: trio.MemoryReceiveChannel[Batch],
    send: trio.MemorySendChannel[Batch],
    publish: Callable[[Sequence[EventRecord], EnvelopeSource], list[EventRecord]],
    settings: ProducerStreamSettings,
) -> None:
    batches = _Batches(receive, send, publish, settings)
    while True:
        await handle_until_idle(receive.receive, batches.take, batches.next_due)
        await batches.send_due()  # the delay of a short batch ran out


class _Batches:
    """The records of each path not sent yet, and when they must go (the paths interleave
    while following: the live path and the query bring the same new events)."""

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[Batch],
        send: trio.MemorySendChannel[Batch],
        publish: Callable[[Sequence[EventRecord], EnvelopeSource], list[EventRecord]],
        settings: ProducerStreamSettings,
    ) -> None:
        self.receive = receive
        self.send = send
        self.publish = publish
        self.size, self.delay = settings.batch_size, settings.batch_delay
        self.pending: dict[EnvelopeSource, list[EventRecord]] = {}
        self.due: dict[EnvelopeSource, float] = {}

    def next_due(self) -> float:
        """When the first short batch must go (inf: none waits)."""
        return min(self.due.values(), default=math.inf)

    async def take(self, batch: Batch) -> None:
        """Add `batch` and whatever waits already; send every full batch."""
        size, pending, due = self.size, self.pending, self.due
        while True:
            records, path = batch
            waiting = pending.setdefault(path, [])
            waiting.extend(self.publish(records, path))
            while len(waiting) >= size:
                await send_eagerly(self.send, (waiting[:size], path))
                del waiting[:size]
            if not waiting:
                del pending[path]
                due.pop(path, None)
            elif path not in due:
                due[path] = trio.current_time() + self.delay
            try:  # what already waits joins these batches without delay
                batch = self.receive.receive_nowait()
            except trio.WouldBlock:
                return

    async def send_due(self) -> None:
        """Send the short batches whose delay ran out."""
        now = trio.current_time()
        for path in [path for path, at in self.due.items() if at <= now]:
            del self.due[path]
            await send_eagerly(self.send, (self.pending.pop(path), path))
