"""A followed event travels once: the query's copies of what went LIVE become a QueryProgress.

While a stream follows the journal, each new event reaches the sender twice: by the live path
right after its commit, and again by the query, which wakes at each commit and reads what it
committed. For a consumer that understands it (`StreamInit.query_progress`), the sender
remembers what it sent by LIVE (`LiveSent.sent_live`), leaves those events out of the
query's batches (`LiveSent.query`), and, `progress_delay` seconds after it first left one
out, sends a `QueryProgress`: the query's position over every event it read and the
consumer's filter let pass, sent or left out. The consumer hands its LIVE copies of the events
that position passed to its runner as the query's (`_consumer_progress`), so its offsets move
as before, while the events cross the wire, and are decoded, once.

Why the progress is true: an event is left out only if this sender sent it by LIVE on this
stream before, so it is ahead of the progress on the wire; the other events up to the
position were sent in QUERY batches, or are ones the consumer's filter excluded (which the
position does not count: it is the query's position over the events that passed). A live
copy that differs from the query's (a placeholder where the query's has a payload, or the
other way round: a filter or transformation that looks at the path) is not left out.

Memory: what was sent live and not read by the query yet, at most `limit` events (the oldest
forgotten beyond that are sent again, as without this); the query follows the live path
closely, so it holds about a `progress_delay` of events.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord

from ._proto.fluvial import v1 as pb

_LIMIT = 100_000


class LiveSent:
    """What one stream's sender sent by LIVE that its query has not read yet, and how far
    the query has come (see the module docstring)."""

    def __init__(self, offset: TimestampOffset, delay: float, *, limit: int = _LIMIT) -> None:
        """`offset`: where the stream's query starts (the Init's resume offset)."""
        self.offset = offset
        self.delay = delay
        self.limit = limit
        # When the next QueryProgress is due (inf: none is).
        self.due = math.inf
        # (persistence id, seq nr) -> sent as a placeholder; in the order sent.
        self._sent: dict[tuple[str, int], bool] = {}

    def sent_live(self, records: Sequence[EventRecord]) -> None:
        """`records` are being sent by LIVE."""
        sent = self._sent
        for record in records:
            sent[record.persistence_id, record.seq_nr] = record.payload is None
        while len(sent) > self.limit:
            del sent[next(iter(sent))]

    def query(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        """Of a QUERY batch's `records` (those the consumer's filter passes, in the query's
        order), the ones still to send: those sent by LIVE are left out, and a progress falls
        due if any was."""
        if not records:
            return []
        sent, kept = self._sent, []
        for record in records:
            placeholder = sent.pop((record.persistence_id, record.seq_nr), None)
            if placeholder is None or placeholder is not (record.payload is None):
                kept.append(record)
        self.offset = self.offset.advanced_over(records)
        if len(kept) < len(records) and self.due == math.inf:
            self.due = trio.current_time() + self.delay
        return kept

    def progress(self) -> pb.StreamEventsResponse:
        """The QueryProgress to send now (none is due after it)."""
        self.due = math.inf
        offset = self.offset
        return pb.StreamEventsResponse(
            query_progress=pb.QueryProgress(timestamp=offset.timestamp, seen=dict(offset.seen))
        )
