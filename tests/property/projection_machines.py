"""The offset tracker under sources that duplicate, reorder, delay, drop and restart.

A model journal of a few entities over four slices is read the ways projection instances read
it: the ordered query (in pages, resumed from the stored offsets after a restart), the live
path (events offered at append, delivered late, out of order, twice, or lost to a full
buffer), the query's position without records (`QueryReached`: what a consumer's filter left
out, up to the next event the query delivers), the backtracking query (events the query has
passed, again, without payloads) and replays by persistence id. Some events commit late, as
with concurrent writers on PostgreSQL: their timestamp lies up to `BACKTRACKING_SPAN` behind
the present, and behind where their instance's query is, so the query never delivers them
(until a restart resumes it before them); the backtracking query finds them, and it keeps
within its span behind the query.
Each run draws the first-sight rule (`fluvial.core.first_sight`): with
`PREVIOUS_OLDER_THAN_WINDOW` (concurrent writers) an entity's first event may commit late too,
so a path meets its seq nr 2 first ("late #1 then #2"); with `QUERY_IN_COMMIT_ORDER` (one
writer) it may not, since that rule takes an unknown entity first met by the query as seen
from where it shows up.
Each arrival goes through the runner's own decision, `fluvial.core.envelope_admission.admit`
(not a copy of it): handle, drop, look the entity up in the store and `learn` it, replay the
gap from the journal, read the timestamp of the event before an entity's first sight (the
first-sight rule), or load the payload of an accepted record that came without one; the
machine does only the I/O it asks for, as `fluvial.projection._instance.Instance.admit` does.

Between admissions, the offsets of slices the query passed without events of theirs move to
where it has come (`OffsetTracker.move_quiet_slices`, which the runner calls every few
seconds), and are committed with what comes next.

The process crashes at any step: what was not committed is lost, and it restarts with one,
two or four instances (slice ranges), each rebuilt from what was persisted the way
`SqliteOffsetStore.load` does, with a window small enough that entities leave memory and are
looked up in the store.

The machines (`ProjectionMachine` here, its subclasses in test_exactly_once_machine.py and
test_at_least_once_machine.py) check:

- exactly-once: the handler's effects and the tracker's changes commit together (or not at
  all); every event is applied exactly once, in seq nr order per entity, with no gap.
- the changes of every commit or save carry, per entity, the seq nr the store holds (what
  the store's compare-and-set checks), so a lone instance never conflicts with itself.
- at-least-once: effects happen at once, offsets are saved every `SAVE_EVERY` envelopes or
  when the timer says; every event is applied at least once, in order, with no gap, and an
  event is applied again only after a crash, and only if its offset was not yet saved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from fluvial.core.envelope_admission import (
    HANDLE,
    Load,
    LookUp,
    LookUpTimestamp,
    Replay,
    admit,
    admit_replayed,
)
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import (
    EnvelopeSource,
    FirstSight,
    OffsetTracker,
    PreviousEvent,
    SeenEntity,
)
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload

SPLITS = {
    1: [SliceRange(0, 3)],
    2: [SliceRange(0, 1), SliceRange(2, 3)],
    4: [SliceRange(s, s) for s in range(4)],
}
PIDS = [f"T|{i}" for i in range(6)]  # pid i on slice i % 4: some slices hold two
WINDOW = 5  # event time units; appends move time by 0..3 per event
SAVE_EVERY = 4
BACKTRACKING_SPAN = 3
PAYLOAD = SerializedPayload("T.Event", 1, b"")  # no placeholders here: see test_placeholders
SETTINGS = settings(max_examples=300, stateful_step_count=50, deadline=None)


def slice_of(pid: str) -> int:
    return int(pid.partition("|")[2]) % 4


def in_timestamp_order(records: Iterable[EventRecord]) -> list[EventRecord]:
    """Timestamp order, then persistence id and seq nr: what the SQL queries return."""
    return sorted(records, key=lambda r: (r.timestamp, r.persistence_id, r.seq_nr))


class Coverage:
    """What the machines exercised, to check that the properties were put to the test."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)

    def saw(self, what: str) -> None:
        self.counts[what] += 1


class Instance:
    """One projection instance: its slice range, tracker, query position and live buffer,
    and what it handled but has not committed (exactly-once) or saved (at-least-once)."""

    def __init__(self, slices: SliceRange, tracker: OffsetTracker) -> None:
        self.slices = slices
        self.tracker = tracker
        self.query_offset = tracker.resume_offset()
        self.live: list[EventRecord] = []
        # What its backtracking query has still to deliver: from the span behind where the
        # query resumed, and the late events committed since (`append_late`).
        self.backtracking_due: list[EventRecord] = []
        self.pending: list[EventRecord] = []
        self.unsaved = 0

    def __repr__(self) -> str:
        return f"Instance({self.slices})"


class ProjectionMachine(RuleBasedStateMachine):
    """The journal, the sources and the store; subclasses say how handling is committed."""

    coverage = Coverage()

    def __init__(self) -> None:
        super().__init__()
        self.journal: dict[str, list[EventRecord]] = {pid: [] for pid in PIDS}
        self.by_time: list[EventRecord] = []
        self.clock = 0
        self.late: set[tuple[str, int]] = set()  # the late events, by pid and seq nr
        # The store: what `save_changes` has written.
        self.stored_entities: dict[str, SeenEntity] = {}
        self.stored_offsets: dict[int, TimestampOffset] = {}
        self.crashes = 0
        self.instances: list[Instance] = []
        self.first_sight = FirstSight.QUERY_IN_COMMIT_ORDER

    @initialize(
        count=st.sampled_from(sorted(SPLITS)),
        first_sight=st.sampled_from(FirstSight),
        data=st.data(),
    )
    def first_start(self, count: int, first_sight: FirstSight, data: st.DataObject) -> None:
        self.first_sight = first_sight  # the journal's writers: one, or concurrent
        self.instances = self.start(count)
        # Half the runs of concurrent writers begin with a late first event and its next
        # (`append_late_first_then_next`), so that every test run meets that first sight.
        begin_late = bool(self.first_late_slots()) and data.draw(st.booleans(), label="begin late")
        if begin_late:
            self.late_first_then_next(data)

    def load(self, slices: SliceRange) -> OffsetTracker:
        """As `SqliteOffsetStore.load`: the entities of `slices` within the window before
        the resume offset; complete if the store holds no older one."""
        offsets = {s: o for s, o in self.stored_offsets.items() if s in slices}
        probe = OffsetTracker(slices, slice_offsets=offsets, window=WINDOW)
        horizon = probe.resume_offset().timestamp - WINDOW
        entities = [e for e in self.stored_entities.values() if e.slice in slices]
        return OffsetTracker(
            slices,
            slice_offsets=offsets,
            entities=[e for e in entities if e.timestamp >= horizon],
            window=WINDOW,
            complete=all(e.timestamp >= horizon for e in entities),
            first_sight=self.first_sight,  # as the runner sets it, from its source
        )

    def start(self, count: int) -> list[Instance]:
        instances = [Instance(slices, self.load(slices)) for slices in SPLITS[count]]
        for instance in instances:
            # Its backtracking starts the span behind where its query resumes.
            resume = instance.query_offset
            instance.backtracking_due = in_timestamp_order(
                r
                for r in self.by_time
                if r.slice in instance.slices
                and r.timestamp >= resume.timestamp - BACKTRACKING_SPAN
                and not resume.is_behind(r)
            )
        return instances

    def instance_of(self, slice_: int) -> Instance:
        return next(i for i in self.instances if slice_ in i.slices)

    def persist(self, instance: Instance) -> None:
        changes = instance.tracker.take_changes()
        for entity in changes.entities:
            # The store's compare-and-set: what the instance last read is still stored, so a
            # single instance never sees a conflict.
            stored = self.stored_entities.get(entity.persistence_id)
            assert changes.previous[entity.persistence_id] == (stored.seq_nr if stored else 0)
            self.stored_entities[entity.persistence_id] = entity
        self.stored_offsets.update(changes.slice_offsets)

    def admit(
        self, instance: Instance, record: EventRecord, source: EnvelopeSource
    ) -> list[EventRecord]:
        """The runner's admission: the core's decision, and the I/O it asks for done against
        the model store and journal."""
        tracker = instance.tracker
        admission = admit(tracker, record, source)
        if isinstance(admission, LookUp):
            stored = self.stored_entities.get(record.persistence_id)
            self.coverage.saw("lookup found" if stored else "lookup missed")
            tracker.learn(record.persistence_id, stored)
            admission = admit(tracker, record, source)
        previous = None
        if isinstance(admission, LookUpTimestamp):
            self.coverage.saw("first sight: timestamp looked up")
            if (record.persistence_id, admission.seq_nr) in self.late:
                self.coverage.saw("first sight after a late event")
            before = self.journal[admission.persistence_id][admission.seq_nr - 1]
            previous = PreviousEvent(before.timestamp)
            admission = admit(tracker, record, source, previous=previous)
        if isinstance(admission, Load):
            self.coverage.saw("loaded")
            record = self.journal[record.persistence_id][record.seq_nr - 1]
            admission = admit(tracker, record, source, loaded=True, previous=previous)
            # Only what is accepted is loaded (nothing here is a placeholder), and answering
            # `Load` changed nothing: the loaded record is accepted still.
            assert admission is HANDLE, (record, admission)
        if admission is HANDLE:
            assert record.payload is not None, "only a loaded record is handed over"
            return [record]
        if isinstance(admission, Replay):
            self.coverage.saw("replay")
            events = self.journal[record.persistence_id]
            return admit_replayed(tracker, events[admission.from_seq_nr - 1 : admission.to_seq_nr])
        self.coverage.saw("dropped")
        return []

    def deliver(
        self, instance: Instance, records: list[EventRecord], source: EnvelopeSource
    ) -> None:
        raise NotImplementedError

    def crash(self) -> None:
        raise NotImplementedError

    @rule(
        pid=st.sampled_from(PIDS),
        steps=st.lists(st.integers(0, 3), min_size=1, max_size=3),
    )
    def append(self, pid: str, steps: list[int]) -> None:
        for step in steps:
            self.clock += step
            self.instance_of(slice_of(pid)).live.append(self.commit_event(pid, self.clock))

    def commit_event(self, pid: str, timestamp: int) -> EventRecord:
        record = EventRecord(
            persistence_id=pid,
            seq_nr=len(self.journal[pid]) + 1,
            entity_type="T",
            slice=slice_of(pid),
            payload=PAYLOAD,
            timestamp=timestamp,
        )
        self.journal[pid].append(record)
        self.by_time.append(record)
        return record

    def late_slots(self) -> list[tuple[str, int, int]]:
        """Per entity, the timestamps its next event may commit late with: within the span
        behind the present, not before its last event, and passed by its instance's query.

        An entity's first event only under the rule of concurrent writers: with
        `QUERY_IN_COMMIT_ORDER` an unknown entity that the query meets at seq nr 2 while its
        late seq nr 1 is behind the query is taken as first seen there (right for one
        writer, whose events never commit late)."""
        slots = []
        for pid in PIDS:
            if not self.journal[pid]:
                if self.first_sight is FirstSight.PREVIOUS_OLDER_THAN_WINDOW:
                    latest = self.instance_of(slice_of(pid)).query_offset.timestamp - 1
                    if self.clock - BACKTRACKING_SPAN <= latest:
                        slots.append((pid, self.clock - BACKTRACKING_SPAN, latest))
                continue
            last = self.journal[pid][-1].timestamp
            earliest = max(self.clock - BACKTRACKING_SPAN, last)
            latest = self.instance_of(slice_of(pid)).query_offset.timestamp - 1
            if earliest <= latest:
                slots.append((pid, earliest, latest))
        return slots

    @precondition(lambda self: self.late_slots())
    @rule(data=st.data())
    def append_late(self, data: st.DataObject) -> None:
        """An event that commits late (concurrent writers on PostgreSQL): the query has
        passed its timestamp and never delivers it; only backtracking finds it."""
        pid, earliest, latest = data.draw(st.sampled_from(self.late_slots()))
        self.commit_late(pid, data.draw(st.integers(earliest, latest)))

    def commit_late(self, pid: str, timestamp: int) -> None:
        record = self.commit_event(pid, timestamp)
        self.late.add((pid, record.seq_nr))
        self.instance_of(record.slice).backtracking_due.append(record)

    def first_late_slots(self) -> list[tuple[str, int, int]]:
        """The late slots of entities with no event yet (concurrent writers only)."""
        return [slot for slot in self.late_slots() if not self.journal[slot[0]]]

    @precondition(lambda self: self.first_late_slots())
    @rule(data=st.data())
    def append_late_first_then_next(self, data: st.DataObject) -> None:
        """An entity's first event commits late and its second right after it: the live path
        or the query may meet seq nr 2 first, and the first-sight rule must then find seq nr
        1 within the window ("first sight after a late event"). `append_late` alone sets
        this up in few runs: an entity soon has events, and the query must be near the
        present."""
        self.late_first_then_next(data)

    def late_first_then_next(self, data: st.DataObject) -> None:
        pid, earliest, latest = data.draw(st.sampled_from(self.first_late_slots()))
        self.commit_late(pid, data.draw(st.integers(earliest, latest)))
        self.clock += data.draw(st.integers(0, 3))
        self.instance_of(slice_of(pid)).live.append(self.commit_event(pid, self.clock))

    def query_page(self, instance: Instance, size: int) -> list[EventRecord]:
        return [
            r
            for r in in_timestamp_order(self.by_time)
            if r.slice in instance.slices and instance.query_offset.is_behind(r)
        ][:size]

    def next_page(self, instance: Instance, size: int) -> bool:
        """Deliver the query's next page (False: it has none). The backtracking query keeps
        within its span behind the query: what the page would leave further behind than the
        span, it delivers first."""
        page = self.query_page(instance, size)
        if not page:
            return False
        horizon = page[-1].timestamp - BACKTRACKING_SPAN
        self.backtrack(instance, [r for r in instance.backtracking_due if r.timestamp < horizon])
        for record in page:
            instance.query_offset = instance.query_offset.advanced_to(record)
        self.deliver(instance, page, EnvelopeSource.QUERY)
        return True

    def backtrack(self, instance: Instance, records: list[EventRecord]) -> None:
        """The backtracking query delivers `records` as it reads them: without payloads,
        loaded once accepted."""
        if not records:
            return
        delivered = {(r.persistence_id, r.seq_nr) for r in records}
        instance.backtracking_due = [
            r for r in instance.backtracking_due if (r.persistence_id, r.seq_nr) not in delivered
        ]
        unloaded = [msgspec.structs.replace(r, payload=None) for r in records]
        self.deliver(instance, unloaded, EnvelopeSource.BACKTRACKING)

    @rule(data=st.data(), size=st.integers(1, 4))
    def query(self, data: st.DataObject, size: int) -> None:
        self.next_page(data.draw(st.sampled_from(self.instances)), size)

    @precondition(lambda self: any(i.live for i in self.instances))
    @rule(data=st.data(), duplicate=st.booleans())
    def live_batch(self, data: st.DataObject, duplicate: bool) -> None:
        """Some buffered live events, in any order; with `duplicate` they stay buffered."""
        instance = data.draw(st.sampled_from([i for i in self.instances if i.live]))
        picked = data.draw(st.lists(st.sampled_from(range(len(instance.live))), min_size=1))
        batch = [instance.live[i] for i in picked]
        if not duplicate:
            instance.live = [r for i, r in enumerate(instance.live) if i not in set(picked)]
        self.deliver(instance, batch, EnvelopeSource.LIVE)

    @precondition(lambda self: any(i.live for i in self.instances))
    @rule(data=st.data())
    def live_buffer_overflows(self, data: st.DataObject) -> None:
        instance = data.draw(st.sampled_from([i for i in self.instances if i.live]))
        del instance.live[data.draw(st.integers(0, len(instance.live) - 1))]

    @rule(data=st.data())
    def query_reaches(self, data: st.DataObject) -> None:
        """The source tells where its query has come with no record to show for it: at most
        the timestamp of the next event its query delivers (before it, it delivered all).
        As for a page, its backtracking delivers first what the query leaves further behind
        than the span."""
        instance = data.draw(st.sampled_from(self.instances))
        page = self.query_page(instance, 1)
        limit = page[0].timestamp if page else self.clock
        reached = data.draw(st.integers(limit - BACKTRACKING_SPAN, limit), label="reached")
        horizon = reached - BACKTRACKING_SPAN
        self.backtrack(instance, [r for r in instance.backtracking_due if r.timestamp < horizon])
        instance.tracker.reach(reached)
        self.coverage.saw("query reached")

    @rule(data=st.data())
    def move_quiet_slices(self, data: st.DataObject) -> None:
        if data.draw(st.sampled_from(self.instances)).tracker.move_quiet_slices():
            self.coverage.saw("quiet slices moved")

    @rule(data=st.data())
    def backtracking(self, data: st.DataObject) -> None:
        instance = data.draw(st.sampled_from(self.instances))
        # What the query passed within the span behind it.
        since = instance.query_offset.timestamp - BACKTRACKING_SPAN
        behind = [
            r
            for r in self.by_time
            if r.slice in instance.slices
            and r.timestamp >= since
            and not instance.query_offset.is_behind(r)
        ]
        if behind:
            self.backtrack(
                instance, data.draw(st.lists(st.sampled_from(behind), min_size=1, max_size=3))
            )

    @rule(count=st.sampled_from(sorted(SPLITS)))
    def crash_and_restart(self, count: int) -> None:
        """Every instance stops (losing what it did not commit), and `count` new ones start
        from the store; their live subscriptions start empty."""
        self.crashes += 1
        self.crash()
        self.instances = self.start(count)

    @invariant()
    def memory_is_never_behind_the_store(self) -> None:
        for instance in self.instances:
            for pid in PIDS:
                in_memory = instance.tracker.seq_nr_of(pid)
                if in_memory is None:
                    if pid in self.stored_entities:
                        self.coverage.saw("evicted")
                    continue
                assert slice_of(pid) in instance.slices
                stored = self.stored_entities.get(pid)
                assert (stored.seq_nr if stored else 0) <= in_memory <= len(self.journal[pid])

    def check_the_query_will_deliver_what_is_not_handled(
        self, handled: dict[str, list[int]]
    ) -> None:
        """The query is the reliable path: whatever no path has handled yet, each instance's
        query has still ahead of it, or, a late event the query has passed, its backtracking
        has still to deliver, within its span behind the query (after a restart too, whatever
        the new slice ranges)."""
        for instance in self.instances:
            pending = {(r.persistence_id, r.seq_nr) for r in instance.pending}
            due = {(r.persistence_id, r.seq_nr) for r in instance.backtracking_due}
            since = instance.query_offset.timestamp - BACKTRACKING_SPAN
            assert all(r.timestamp >= since for r in instance.backtracking_due), instance
            for r in self.by_time:
                if r.slice not in instance.slices or r.seq_nr in handled[r.persistence_id]:
                    continue
                if (key := (r.persistence_id, r.seq_nr)) not in pending:
                    assert instance.query_offset.is_behind(r) or key in due, (instance, r)

    def stored_offsets_run_ahead_of(self, handled: dict[str, list[int]]) -> list[EventRecord]:
        """Events the stored slice offsets say were passed, which were never handled, but
        for late ones within the span behind them (a restart's backtracking finds those)."""
        return [
            r
            for r in self.by_time
            if (offset := self.stored_offsets.get(r.slice)) is not None
            and not offset.is_behind(r)
            and r.seq_nr not in handled[r.persistence_id]
            and not (
                (r.persistence_id, r.seq_nr) in self.late
                and r.timestamp >= offset.timestamp - BACKTRACKING_SPAN
            )
        ]

    def check_caught_up(self, handled: dict[str, list[int]]) -> None:
        for pid, events in self.journal.items():
            assert set(handled[pid]) == {e.seq_nr for e in events}, pid
        self.coverage.saw(f"caught up with {len(self.instances)} instance(s)")


EXERCISED = (
    "quiet slices moved",
    "query reached",
    "evicted",
    "first sight: timestamp looked up",
    "first sight after a late event",
    "loaded",
    "lookup found",
    "replay",
    "caught up with 1 instance(s)",
    "caught up with 2 instance(s)",
    "caught up with 4 instance(s)",
)
