"""A followed event travels once: the query's copies of what went LIVE become a QueryProgress.

While a stream follows the journal, each new event reaches the sender twice: by the live path
right after its commit, and again by the query, which wakes at each commit and reads what it
committed. For a consumer that understands it (`StreamInit.query_progress`), the sender
remembers what it sent by each path (`SentOnce`) and sends each event once: it leaves out of
the query's batches what went LIVE and, `progress_delay` seconds after it first left one out,
sends a `QueryProgress`, the query's position over every event it read that the consumer's
filter let pass, sent or left out; and it leaves out of a LIVE batch what the query sent
already (the query can read an event before its LIVE copy reaches the sender). The consumer
hands its LIVE copies of the events a progress passed to its runner as the query's
(`_consumer_progress`), so its offsets move as before, while the events cross the wire, and
are decoded, once.

Why the progress is true: an event is left out of the query's batches only if this sender
sent it by LIVE on this stream before, so it is ahead of the progress on the wire; the other
events up to the position were sent in QUERY batches, or are ones the consumer's filter
excluded (which the position does not count: it is the query's position over the events that
passed). A copy that differs from the one sent (a placeholder where the other has a payload,
or the other way round: a filter or transformation that looks at the path) is not left out.

Memory: what was sent by one path and not brought by the other yet, at most `limit` events a
path (the oldest forgotten beyond that are sent again, as without this). The query follows the
live path closely, so the LIVE side holds about a `progress_delay` of events; the QUERY side
forgets what the live path has passed (it brings events in commit order), and while catching
up, before the live path brings anything, holds the newest `limit` events the query sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord

from ._proto.fluvial import v1 as pb

_LIMIT = 100_000
# (persistence id, seq nr) -> (sent as a placeholder, timestamp)
_Sent = dict[tuple[str, int], tuple[bool, int]]


class SentOnce:
    """What one stream's sender sent by one path that the other may still bring, and how far
    the query has come (see the module docstring)."""

    def __init__(self, offset: TimestampOffset, delay: float, *, limit: int = _LIMIT) -> None:
        """`offset`: where the stream's query starts (the Init's resume offset)."""
        self.offset = offset
        self.delay = delay
        self.limit = limit
        # When the next QueryProgress is due (inf: none is).
        self.due = math.inf
        self._by_live: _Sent = {}  # in the order sent
        self._by_query: _Sent = {}  # in the query's order: timestamp order

    def live(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        """Of a LIVE batch's `records` (those the consumer's filter passes), the ones still
        to send: those the query sent already are left out."""
        by_query, kept = self._by_query, []
        for record in records:
            if not _sent_as(by_query, record):
                kept.append(record)
        if records and by_query:
            # The live path brings events in commit order, which is timestamp order where
            # there is a live path: what the query sent before these it will not bring.
            newest = records[-1].timestamp
            while by_query and next(iter(by_query.values()))[1] < newest:
                del by_query[next(iter(by_query))]
        _remember(self._by_live, kept, self.limit)
        return kept

    def query(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        """Of a QUERY batch's `records` (those the consumer's filter passes, in the query's
        order), the ones still to send: those sent by LIVE are left out, and a progress falls
        due if any was."""
        if not records:
            return []
        by_live, kept = self._by_live, []
        for record in records:
            if not _sent_as(by_live, record):
                kept.append(record)
        self.offset = self.offset.advanced_over(records)
        if len(kept) < len(records) and self.due == math.inf:
            self.due = trio.current_time() + self.delay
        # The query may read an event before its LIVE copy reaches this sender.
        _remember(self._by_query, kept, self.limit)
        return kept

    def progress(self) -> pb.StreamEventsResponse:
        """The QueryProgress to send now (none is due after it)."""
        self.due = math.inf
        offset = self.offset
        return pb.StreamEventsResponse(
            query_progress=pb.QueryProgress(timestamp=offset.timestamp, seen=dict(offset.seen))
        )


def _sent_as(sent: _Sent, record: EventRecord) -> bool:
    """Whether `record` was sent (and is forgotten now), as it is: a placeholder or not."""
    before = sent.pop((record.persistence_id, record.seq_nr), None)
    return before is not None and before[0] is (record.payload is None)


def _remember(sent: _Sent, records: Sequence[EventRecord], limit: int) -> None:
    for record in records:
        sent[record.persistence_id, record.seq_nr] = (record.payload is None, record.timestamp)
    while len(sent) > limit:
        del sent[next(iter(sent))]
