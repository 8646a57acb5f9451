"""The query's copies of LIVE events, made by the consumer: a followed event travels once.

A consumer asks for `QueryProgress` in its Init (`stream_init`); the producer then leaves out
of its QUERY batches the events it sent this stream by LIVE already, and tells how far its
query has come instead (`_producer_progress`). The runner still needs the query's copy of
each event: only the QUERY path moves its slices' offsets (and the first-sight rules judge by
path). So the source keeps the LIVE records it handed over (`FollowedLive.handed_live`) and,
when the QUERY position moves, by a QueryProgress or a QUERY batch, hands the ones that
position passed to the runner as QUERY records (`FollowedLive.passed`), in timestamp order
with the batch's own: the runner sees each event by LIVE and then by QUERY, as it did when
both crossed the wire, and drops the second copy by seq nr.

A producer that does not know QueryProgress sends the query's copies itself: those in a QUERY
batch are not handed again. At most `limit` LIVE records are kept (the oldest forgotten beyond
that: their slices' offsets then wait for the next event of the slice, as with a producer that
left them out and no progress).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord

_LIMIT = 100_000


class FollowedLive:
    """The LIVE records one source handed to its runner that the stream's QUERY position has
    not passed yet (see the module docstring)."""

    def __init__(self, *, limit: int = _LIMIT) -> None:
        self.limit = limit
        self._records: deque[EventRecord] = deque()

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        """A new stream: its query reads and sends again what the last one left unread."""
        self._records.clear()

    def handed_live(self, records: Sequence[EventRecord]) -> None:
        """`records` of a LIVE batch went to the runner."""
        kept = self._records
        kept.extend(records)
        for _ in range(len(kept) - self.limit):
            kept.popleft()

    def passed(
        self, offset: TimestampOffset, query: Sequence[EventRecord] = ()
    ) -> list[EventRecord]:
        """What the QUERY path hands the runner as its position moves to `offset`: `query`
        (a QUERY batch's records, or none for a QueryProgress) with the LIVE records it
        passed that are not among them, in timestamp order."""
        kept = self._records
        passed: list[EventRecord] = []
        # LIVE records come in commit order, which is timestamp order where the live path is.
        while kept and not offset.is_behind(kept[0]):
            passed.append(kept.popleft())
        if not passed:
            return list(query)
        if query:
            sent = {(r.persistence_id, r.seq_nr) for r in query}
            passed = [r for r in passed if (r.persistence_id, r.seq_nr) not in sent]
            passed.extend(query)
            passed.sort(key=_timestamp_order)  # stable: at one timestamp, seq nr order
        return passed


def _timestamp_order(record: EventRecord) -> tuple[int, int]:
    return record.timestamp, record.seq_nr
