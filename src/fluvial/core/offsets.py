"""Offsets: where a consumer is in an events-by-slices stream.

An offset is a timestamp plus the `(persistence id -> seq nr)` pairs already seen *at* that
timestamp, because several events may share a timestamp (PostgreSQL) and a consumer must resume
after exactly the ones it has seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from fluvial.core.records import EventRecord


@attrs.frozen
class TimestampOffset:
    """A position in the timestamp order: after every event before `timestamp`, and after the
    events at `timestamp` whose seq nr is at most `seen[persistence_id]`.

    `timestamp` is in microseconds since the epoch, as journals assign it; 0 is before every
    event (`start()`). A frozen value: `advanced_to` returns a new offset.
    """

    timestamp: int
    seen: Mapping[str, int] = attrs.field(factory=dict)

    @classmethod
    def start(cls) -> TimestampOffset:
        """Before every event."""
        return cls(0)

    def is_behind(self, record: EventRecord) -> bool:
        """Whether `record` comes after this offset (has not been seen)."""
        if record.timestamp != self.timestamp:
            return record.timestamp > self.timestamp
        return self.seen.get(record.persistence_id, 0) < record.seq_nr

    def advanced_to(self, record: EventRecord) -> TimestampOffset:
        """This offset after seeing `record` (records come in timestamp order)."""
        if record.timestamp == self.timestamp:
            return TimestampOffset(
                self.timestamp, {**self.seen, record.persistence_id: record.seq_nr}
            )
        return TimestampOffset(record.timestamp, {record.persistence_id: record.seq_nr})

    def advanced_over(self, records: Sequence[EventRecord]) -> TimestampOffset:
        """This offset after seeing `records` (in timestamp order, none behind it), as
        `advanced_to` one record after the other would leave it, in one step."""
        if not records:
            return self
        last = records[-1].timestamp
        seen = dict(self.seen) if last == self.timestamp else {}
        tail = len(records)
        while tail > 0 and records[tail - 1].timestamp == last:
            tail -= 1
        for record in records[tail:]:
            seen[record.persistence_id] = record.seq_nr
        return TimestampOffset(last, seen)
