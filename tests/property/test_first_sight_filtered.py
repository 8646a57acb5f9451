"""The first-sight rule of a consumer with filters (`FirstSight.REPLAY_FROM_FIRST`), through the
real core (`admit`, `admit_replayed`, `OffsetTracker`), under a source whose filter changes.

A model producer holds a few entities over two slices and a filter of hidden entities that
the machine changes at any step: the ordered query and the live path leave out what the filter
hides when they deliver (an event of an entity hidden then never travels), and replays by
persistence id deliver everything (the filter is not applied to them). The consumer's
offsets are stored after every delivery, and it restarts from them at any step, with a window
small enough that entities leave memory and are looked up. Checked:

- at every step, each entity's handled events are 1..k, each once, in order: nothing is
  handled before its history;
- at the end, once the filter shows everything and every entity has one event more, every
  event of every entity was handled: an entity met first above seq nr 1, its earlier events
  filtered out, had them replayed. (`QUERY_IN_COMMIT_ORDER` breaks this: the query's first
  sight would be accepted, losing the history.)
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fluvial.core.envelope_admission import HANDLE, Load, LookUp, Replay, admit, admit_replayed
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, FirstSight, OffsetTracker, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload

RULE = FirstSight.REPLAY_FROM_FIRST
SLICES = SliceRange(0, 1)
PIDS = [f"T|{n}" for n in range(4)]  # pid n on slice n % 2
WINDOW = 4
PAYLOAD = SerializedPayload("T.Event", 1, b"")


class FilteredSourceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.journal: dict[str, list[EventRecord]] = {pid: [] for pid in PIDS}
        self.by_time: list[EventRecord] = []
        self.clock = 0
        self.hidden: set[str] = set()
        self.handled: dict[str, list[int]] = {pid: [] for pid in PIDS}
        self.stored_entities: dict[str, SeenEntity] = {}
        self.stored_offsets: dict[int, TimestampOffset] = {}
        self.restart()

    def restart(self) -> None:
        self.tracker = OffsetTracker(
            SLICES,
            slice_offsets=self.stored_offsets,
            entities=list(self.stored_entities.values()),
            window=WINDOW,
            complete=not self.stored_entities,
            first_sight=RULE,
        )
        self.query_at = self.tracker.resume_offset()
        self.live: list[EventRecord] = []

    def admit(self, record: EventRecord, source: EnvelopeSource) -> None:
        admission = admit(self.tracker, record, source)
        if isinstance(admission, LookUp):
            self.tracker.learn(
                record.persistence_id, self.stored_entities.get(record.persistence_id)
            )
            admission = admit(self.tracker, record, source)
        assert not isinstance(admission, Load)  # every record here has its payload
        if admission is HANDLE:
            handled = [record]
        elif isinstance(admission, Replay):
            events = self.journal[record.persistence_id]
            handled = admit_replayed(
                self.tracker, events[admission.from_seq_nr - 1 : admission.to_seq_nr]
            )
        else:
            handled = []
        for event in handled:
            self.handled[event.persistence_id].append(event.seq_nr)
        changes = self.tracker.take_changes()
        for entity in changes.entities:
            self.stored_entities[entity.persistence_id] = entity
        self.stored_offsets.update(changes.slice_offsets)

    @rule(pid=st.sampled_from(PIDS), step=st.integers(0, 2))
    def append(self, pid: str, step: int) -> None:
        self.clock += step
        record = EventRecord(
            pid,
            len(self.journal[pid]) + 1,
            "T",
            int(pid.partition("|")[2]) % 2,
            PAYLOAD,
            timestamp=self.clock,
        )
        self.journal[pid].append(record)
        self.by_time.append(record)
        if pid not in self.hidden:  # the producer's live path applies the filter
            self.live.append(record)

    @rule(pid=st.sampled_from(PIDS), hide=st.booleans())
    def change_filter(self, pid: str, hide: bool) -> None:
        if hide:
            self.hidden.add(pid)
        else:
            self.hidden.discard(pid)

    @rule(size=st.integers(1, 3))
    def query(self, size: int) -> None:
        ahead = sorted(
            (r for r in self.by_time if self.query_at.is_behind(r)),
            key=lambda r: (r.timestamp, r.persistence_id, r.seq_nr),
        )[:size]
        for record in ahead:
            self.query_at = self.query_at.advanced_to(record)
            if record.persistence_id not in self.hidden:
                self.admit(record, EnvelopeSource.QUERY)

    @rule(data=st.data())
    def live_event(self, data: st.DataObject) -> None:
        if self.live:
            index = data.draw(st.integers(0, len(self.live) - 1))
            record = self.live[index] if data.draw(st.booleans()) else self.live.pop(index)
            self.admit(record, EnvelopeSource.LIVE)

    @rule()
    def crash_and_restart(self) -> None:
        self.restart()

    @invariant()
    def nothing_is_handled_before_its_history(self) -> None:
        for pid, seq_nrs in self.handled.items():
            assert seq_nrs == list(range(1, len(seq_nrs) + 1)), (pid, seq_nrs)

    def teardown(self) -> None:
        self.hidden.clear()
        for pid in PIDS:
            self.append(pid, 1)
        while any(self.query_at.is_behind(r) for r in self.by_time):
            self.query(3)
        self.nothing_is_handled_before_its_history()
        for pid, events in self.journal.items():
            assert self.handled[pid] == [e.seq_nr for e in events], pid


TestFilteredSource = FilteredSourceMachine.TestCase
TestFilteredSource.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
