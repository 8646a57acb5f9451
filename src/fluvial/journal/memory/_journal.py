"""An in-memory Journal and SnapshotStore for tests: the same contract, no file."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import trio
from msgspec.structs import replace

from fluvial._wakeup import Signal
from fluvial.core.events_from_elsewhere import decide_from_elsewhere
from fluvial.core.ids import SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import (
    EventRecord,
    SnapshotRecord,
    check_append_batch,
    check_from_elsewhere,
)
from fluvial.journal._live import LivePublisher
from fluvial.journal.api import (
    MAX_SEQ_NR,
    MAX_TIMESTAMP,
    EventStored,
    JournalConflict,
    JournalGap,
    WriteFromElsewhereResult,
)
from fluvial.journal.memory._offset_store import MemoryOffsetStore
from fluvial.journal.queries import snapshot_is_behind


class MemoryJournal:
    """Journal, SnapshotStore and WriteFromElsewhere in memory. Timestamps are a counter, not
    a clock, so tests are deterministic."""

    def __init__(self) -> None:
        self._by_pid: dict[str, list[EventRecord]] = {}
        self._by_time: list[EventRecord] = []
        self._snapshots: dict[str, list[SnapshotRecord]] = {}
        self._clock = 0
        self._appends = Signal()
        self.live = LivePublisher()
        self._offset_store: MemoryOffsetStore | None = None

    def offset_store(self) -> MemoryOffsetStore:
        """The offset store of projections over this journal, in memory beside it (the same
        one on every call; leases on the wall clock): `serve_projection` uses it unless it
        is given another."""
        if self._offset_store is None:
            self._offset_store = MemoryOffsetStore(self)
        return self._offset_store

    def _next_timestamp(self) -> int:
        self._clock += 1
        return self._clock

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """See `Journal.append`."""
        check_append_batch(events)
        await trio.lowlevel.checkpoint()
        if not events:
            return []
        pid = events[0].persistence_id
        history = self._by_pid.setdefault(pid, [])
        highest = history[-1].seq_nr if history else 0
        if events[0].seq_nr <= highest:
            raise JournalConflict(pid, events[0].seq_nr)
        if events[0].seq_nr != highest + 1:
            raise JournalGap(pid, events[0].seq_nr, highest)
        stamped = [self._stamped(e) for e in events]
        history.extend(stamped)
        self._committed(stamped)
        return stamped

    async def write_from_elsewhere(
        self, events: Sequence[EventRecord]
    ) -> list[WriteFromElsewhereResult]:
        """See `WriteFromElsewhere.write_from_elsewhere`."""
        check_from_elsewhere(events)
        await trio.lowlevel.checkpoint()
        decision = decide_from_elsewhere(events, self._highest_seq_nr)
        stored = [self._stamped(record) for record in decision.stored]
        for record in stored:
            self._by_pid.setdefault(record.persistence_id, []).append(record)
        stamped = iter(stored)
        results: list[WriteFromElsewhereResult] = [
            EventStored(next(stamped)) if verdict is None else verdict
            for verdict in decision.verdicts
        ]
        if stored:
            self._committed(stored)
        return results

    def _committed(self, stamped: list[EventRecord]) -> None:
        """Tell followers and live subscribers of `stamped`, just stored."""
        self._by_time.extend(stamped)
        self._appends.notify()
        self.live.publish(stamped)

    def _stamped(self, record: EventRecord) -> EventRecord:
        """`record` as stored now: with the next timestamp, which is also its write
        timestamp unless it has one."""
        timestamp = self._next_timestamp()
        return replace(
            record, timestamp=timestamp, write_timestamp=record.write_timestamp or timestamp
        )

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        """See `Journal.read_events`."""
        await trio.lowlevel.checkpoint()
        history = self._by_pid.get(persistence_id, [])
        return [e for e in history if from_seq_nr <= e.seq_nr <= to_seq_nr][:limit]

    async def highest_seq_nr(self, persistence_id: str) -> int:
        """See `Journal.highest_seq_nr`."""
        await trio.lowlevel.checkpoint()
        return self._highest_seq_nr(persistence_id)

    def _highest_seq_nr(self, persistence_id: str) -> int:
        history = self._by_pid.get(persistence_id)
        return history[-1].seq_nr if history else 0

    async def read_events_by_slices(
        self,
        entity_type: str,
        slices: SliceRange,
        after: TimestampOffset,
        limit: int,
        *,
        to_timestamp: int = MAX_TIMESTAMP,
        with_payloads: bool = True,
        exclude_origin: str | None = None,
    ) -> list[EventRecord]:
        """See `Journal.read_events_by_slices`."""
        await trio.lowlevel.checkpoint()
        start = bisect.bisect_left(self._by_time, after.timestamp, key=lambda e: e.timestamp)
        found: list[EventRecord] = []
        for record in self._by_time[start:]:
            if len(found) == limit or record.timestamp > to_timestamp:
                break
            if (
                record.entity_type == entity_type
                and record.slice in slices
                and after.is_behind(record)
            ):
                from_origin = (
                    record.replication is not None
                    and record.replication.origin_replica == exclude_origin
                )
                with_payload = with_payloads and not from_origin
                found.append(record if with_payload else replace(record, payload=None))
        return found

    async def latest_event_timestamp(self, entity_type: str, slices: SliceRange) -> int | None:
        """See `Journal.latest_event_timestamp`: the newest of `_by_time` that matches."""
        await trio.lowlevel.checkpoint()
        for record in reversed(self._by_time):
            if record.entity_type == entity_type and record.slice in slices:
                return record.timestamp
        return None

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        """See `Journal.load_event`."""
        await trio.lowlevel.checkpoint()
        return self._event_at(persistence_id, seq_nr)

    def _event_at(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        history = self._by_pid.get(persistence_id, [])
        # Seq nrs are gapless from 1, so an event's place in its history is its seq nr - 1.
        return history[seq_nr - 1] if 1 <= seq_nr <= len(history) else None

    def append_count(self) -> int:
        """See `Journal.append_count`."""
        return self._appends.count

    async def wait_for_new_events(self, seen_append_count: int) -> None:
        """See `Journal.wait_for_new_events`."""
        await self._appends.wait(seen_append_count)

    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        """See `SnapshotStore.save_snapshot`."""
        await trio.lowlevel.checkpoint()
        stored = [
            s
            for s in self._snapshots.get(snapshot.persistence_id, [])
            if s.seq_nr != snapshot.seq_nr
        ]
        event = self._event_at(snapshot.persistence_id, snapshot.seq_nr)
        if event is not None:
            snapshot = replace(snapshot, event_timestamp=event.timestamp, tags=event.tags)
        stored.append(replace(snapshot, timestamp=self._next_timestamp()))
        stored.sort(key=lambda s: s.seq_nr)
        self._snapshots[snapshot.persistence_id] = stored[-keep:]

    async def load_snapshot(
        self, persistence_id: str, max_seq_nr: int = MAX_SEQ_NR
    ) -> SnapshotRecord | None:
        """See `SnapshotStore.load_snapshot`."""
        await trio.lowlevel.checkpoint()
        candidates = [s for s in self._snapshots.get(persistence_id, []) if s.seq_nr <= max_seq_nr]
        return candidates[-1] if candidates else None

    async def read_snapshots_by_slices(
        self, entity_type: str, slices: SliceRange, after: TimestampOffset, limit: int
    ) -> list[SnapshotRecord]:
        """See `SnapshotStore.read_snapshots_by_slices`."""
        await trio.lowlevel.checkpoint()
        newest = [
            stored[-1]
            for stored in self._snapshots.values()
            if stored
            and stored[-1].entity_type == entity_type
            and stored[-1].slice in slices
            and snapshot_is_behind(after, stored[-1])
        ]
        newest.sort(key=lambda s: (s.event_timestamp, s.persistence_id))
        return newest[:limit]
