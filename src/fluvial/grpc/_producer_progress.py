"""A followed event travels once: the query's copies of what went LIVE become a QueryProgress.

While a stream follows the journal, each new event reaches the sender twice: by the live path
right after its commit, and again by the query, which wakes at each commit and reads what it
committed. For a consumer that understands it (`StreamInit.query_progress`), the sender
remembers what it sent by each path (`SentOnce`) and sends each event once: it leaves out of
the query's batches what went LIVE and, `progress_delay` seconds after it first left one out,
sends a `QueryProgress`, the query's position over every event it read, sent or left out; a
progress falls due too when the consumer's filter excluded events of a QUERY batch, so that
a consumer whose filter leaves out most of a stream still learns how far the query has come
(its runner moves the offsets of the slices without events there). And it leaves out of a
LIVE batch what the query sent already (the query can read an event before its LIVE copy
reaches the sender). The consumer hands its LIVE copies of the events a progress passed to
its runner as the query's (`_consumer_progress`), so its offsets move as before, while the
events cross the wire, and are decoded, once.

Why the progress is true: an event is left out of the query's batches only if this sender
sent it by LIVE on this stream before, so it is ahead of the progress on the wire; the other
events up to the position were sent in QUERY batches, or are ones the consumer's filter
excluded, which the consumer is not to see (an update that includes their entity later
replays its history). A copy that differs from the one sent (a placeholder where the other
has a payload, or the other way round: a filter or transformation that looks at the path) is
not left out.

Memory: what was sent by one path and not brought by the other yet, the oldest forgotten
beyond a bound (those are sent again, as without this). The LIVE side holds at most `limit`
events, about a `follow_delay` and a `progress_delay` of them (the query follows the live
path closely, and what it passes it forgets); the QUERY side at most the newest 1,000 the
query sent, and forgets what the live path has passed (it brings events in commit order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord

from ._response_wire import EncodedResponse, progress_response

_LIMIT = 100_000
# The query reads an event ahead of its LIVE copy only while that copy is on its way: a few
# events, the newest it sent.
_QUERY_LIMIT = 1_000
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
        if records:
            # The live path brings events in commit order, which is timestamp order where
            # there is a live path: what the query sent before these it will not bring.
            _forget_before(by_query, records[-1].timestamp)
        _remember(self._by_live, kept, self.limit)
        return kept

    def query(
        self, records: Sequence[EventRecord], *, read: Sequence[EventRecord] | None = None
    ) -> list[EventRecord]:
        """Of a QUERY batch's `records` (those the consumer's filter passes of the `read`
        ones, in the query's order), the ones still to send: those sent by LIVE are left out,
        and a progress falls due if any was, or if the filter excluded any."""
        read = records if read is None else read
        if not read:
            return []
        by_live, kept = self._by_live, []
        for record in records:
            if not _sent_as(by_live, record):
                kept.append(record)
        self.offset = self.offset.advanced_over(read)
        # What went LIVE before the query's position that it did not bring (the consumer's
        # filter changed in between) it will not bring later.
        _forget_before(by_live, self.offset.timestamp)
        if len(kept) < len(read) and self.due == math.inf:
            self.due = trio.current_time() + self.delay
        # The query may read an event before its LIVE copy reaches this sender.
        _remember(self._by_query, kept[-_QUERY_LIMIT:], _QUERY_LIMIT)
        return kept

    def progress(self) -> EncodedResponse:
        """The QueryProgress to send now, encoded (none is due after it)."""
        self.due = math.inf
        return progress_response(self.offset.timestamp, self.offset.seen)


def _sent_as(sent: _Sent, record: EventRecord) -> bool:
    """Whether `record` was sent (and is forgotten now), as it is: a placeholder or not."""
    before = sent.pop((record.persistence_id, record.seq_nr), None)
    return before is not None and before[0] is (record.payload is None)


def _forget_before(sent: _Sent, timestamp: int) -> None:
    """Forget the oldest of `sent` (in timestamp order) while they are before `timestamp`."""
    while sent:
        oldest = next(iter(sent))
        if sent[oldest][1] >= timestamp:
            return
        del sent[oldest]


def _remember(sent: _Sent, records: Sequence[EventRecord], limit: int) -> None:
    for record in records:
        sent[record.persistence_id, record.seq_nr] = (record.payload is None, record.timestamp)
    while len(sent) > limit:
        del sent[next(iter(sent))]
