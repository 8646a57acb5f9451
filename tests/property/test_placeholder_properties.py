"""Placeholders under a changing filter, crashes and sources that duplicate and reorder.

A model producer sends each entity's events to one projection instance (slices 0..1): the
query in timestamp order, pages resumed from the stored offsets after a restart, and a live
path that delivers late, out of order, twice or never. An event is sent as a placeholder (no
payload) when the producer's transformation drops it (`dropped`, whatever the filter) or when
the consumer's filter excluded its entity when it was appended (`filtered`). Replays ignore
the filter (what DESIGN.md section 5 asks of them): a gap's replay, and the replay of an
entity's whole history that the producer runs when the filter includes the entity again
(`include`, committed with what it replayed). Every arrival goes through the runner's own
decision, `fluvial.core.envelope_admission.admit`; the handler and the offsets commit
together (exactly once), and the process crashes at any step and restarts from the store,
which keeps `SeenEntity.placeholders`.

- Every event handled is handled once, in seq nr order per entity, and is no placeholder.
- No stored offset passes an event that was neither handled nor sent as a placeholder.
- Caught up: every event sent with its payload was handled, and so was every filtered event
  of an entity included after it (its history was replayed, not dropped as a duplicate).
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fluvial.core.envelope_admission import HANDLE, LookUp, Replay, admit, admit_replayed
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, OffsetTracker, SeenEntity
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload

SLICES = SliceRange(0, 1)
PIDS = [f"T|{i}" for i in range(4)]  # pid i on slice i % 2
WINDOW = 5  # event time units; appends move time by 0..2 per event
PAYLOAD = SerializedPayload("T.Event", 1, b"")
QUERY, LIVE, REPLAY = EnvelopeSource.QUERY, EnvelopeSource.LIVE, EnvelopeSource.REPLAY


class PlaceholderMachine(RuleBasedStateMachine):
    """The producer, the filter, one projection instance and its store."""

    counts: dict[str, int] = defaultdict(int)

    def __init__(self) -> None:
        super().__init__()
        self.journal: dict[str, list[EventRecord]] = {pid: [] for pid in PIDS}
        self.dropped: set[tuple[str, int]] = set()
        self.filtered: set[tuple[str, int]] = set()
        self.excluded: set[str] = {PIDS[0], PIDS[1]}
        self.included_up_to: dict[str, int] = defaultdict(int)  # seq nrs an include replayed
        self.by_time: list[EventRecord] = []
        self.clock = 0
        self.stored_entities: dict[str, SeenEntity] = {}
        self.stored_offsets: dict[int, TimestampOffset] = {}
        self.committed: dict[str, list[int]] = defaultdict(list)
        self.start()

    def start(self) -> None:
        """As `SqliteOffsetStore.load`: the entities within the window before the resume
        offset; complete if the store holds no older one."""
        probe = OffsetTracker(SLICES, slice_offsets=self.stored_offsets, window=WINDOW)
        horizon = probe.resume_offset().timestamp - WINDOW
        entities = list(self.stored_entities.values())
        self.tracker = OffsetTracker(
            SLICES,
            slice_offsets=self.stored_offsets,
            entities=[e for e in entities if e.timestamp >= horizon],
            window=WINDOW,
            complete=all(e.timestamp >= horizon for e in entities),
        )
        self.query_offset = self.tracker.resume_offset()
        self.live: list[EventRecord] = []
        self.pending: list[EventRecord] = []

    def sent(self, record: EventRecord) -> EventRecord:
        """`record` as the stream carries it."""
        key = (record.persistence_id, record.seq_nr)
        if key in self.dropped or key in self.filtered:
            return EventRecord(
                record.persistence_id,
                record.seq_nr,
                record.entity_type,
                record.slice,
                None,
                timestamp=record.timestamp,
            )
        return record

    def replayed(self, pid: str, first: int, last: int) -> list[EventRecord]:
        """The entity's events `first..last` as a replay carries them (no filter)."""
        events = self.journal[pid][first - 1 : last]
        return [
            e if (pid, e.seq_nr) not in self.dropped else self.sent(e)  # dropped stays dropped
            for e in events
        ]

    def admit(self, record: EventRecord, source: EnvelopeSource) -> None:
        """The runner's admission: the core's decision, and the I/O it asks for."""
        admission = admit(self.tracker, record, source)
        if isinstance(admission, LookUp):
            stored = self.stored_entities.get(record.persistence_id)
            self.counts["lookup found" if stored else "lookup missed"] += 1
            self.tracker.learn(record.persistence_id, stored)
            admission = admit(self.tracker, record, source)
        if admission is HANDLE:
            self.pending.append(record)
        elif isinstance(admission, Replay):
            self.counts["gap replayed"] += 1
            events = self.replayed(
                record.persistence_id, admission.from_seq_nr, admission.to_seq_nr
            )
            self.pending.extend(admit_replayed(self.tracker, events))

    @rule(pid=st.sampled_from(PIDS), steps=st.lists(st.integers(0, 2), min_size=1, max_size=3))
    def append(self, pid: str, steps: list[int]) -> None:
        for step in steps:
            self.clock += step
            seq_nr = len(self.journal[pid]) + 1
            record = EventRecord(pid, seq_nr, "T", int(pid[2:]) % 2, PAYLOAD, timestamp=self.clock)
            self.journal[pid].append(record)
            self.by_time.append(record)
            self.live.append(record)
            if pid in self.excluded:
                self.filtered.add((pid, seq_nr))
            elif self.clock % 3 == 0:  # now and then the transformation drops one
                self.dropped.add((pid, seq_nr))

    @rule(pid=st.sampled_from(PIDS))
    def exclude(self, pid: str) -> None:
        self.excluded.add(pid)

    @precondition(lambda self: self.excluded)
    @rule(data=st.data())
    def include(self, data: st.DataObject) -> None:
        """The filter includes the entity again: the producer replays its history, and the
        instance commits what it handled."""
        pid = data.draw(st.sampled_from(sorted(self.excluded)))
        self.excluded.discard(pid)
        waiting = (self.tracker.handled_seq_nr_of(pid) or 0) < (self.tracker.seq_nr_of(pid) or 0)
        before = len(self.pending)
        for record in self.replayed(pid, 1, len(self.journal[pid])):
            self.admit(record, REPLAY)
        if waiting and len(self.pending) > before:
            self.counts["placeholders replayed"] += 1
        self.included_up_to[pid] = len(self.journal[pid])
        self.commit()

    def read_page(self, size: int) -> list[EventRecord]:
        ordered = sorted(self.by_time, key=lambda r: (r.timestamp, r.persistence_id, r.seq_nr))
        page = [r for r in ordered if self.query_offset.is_behind(r)][:size]
        for record in page:
            self.query_offset = self.query_offset.advanced_to(record)
        return page

    @rule(size=st.integers(1, 4))
    def query(self, size: int) -> None:
        for record in self.read_page(size):
            self.admit(self.sent(record), QUERY)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), keep=st.booleans())
    def live_batch(self, data: st.DataObject, keep: bool) -> None:
        """Some buffered live events, in any order; with `keep` they stay buffered."""
        picked = data.draw(st.lists(st.sampled_from(range(len(self.live))), min_size=1))
        batch = [self.live[i] for i in picked]
        if not keep:
            self.live = [r for i, r in enumerate(self.live) if i not in set(picked)]
        for record in batch:
            self.admit(self.sent(record), LIVE)

    @rule()
    def commit(self) -> None:
        """The handler's writes and the offsets, in one transaction."""
        for record in self.pending:
            self.committed[record.persistence_id].append(record.seq_nr)
        self.pending = []
        changes = self.tracker.take_changes()
        for entity in changes.entities:
            stored = self.stored_entities.get(entity.persistence_id)
            assert changes.previous[entity.persistence_id] == (stored.seq_nr if stored else 0)
            self.stored_entities[entity.persistence_id] = entity
        self.stored_offsets = {**self.stored_offsets, **changes.slice_offsets}

    @rule()
    def crash_and_restart(self) -> None:
        if self.pending:
            self.counts["crash before commit"] += 1
        self.start()

    @invariant()
    def handled_once_in_order_and_never_a_placeholder(self) -> None:
        for pid, seq_nrs in self.committed.items():
            assert seq_nrs == sorted(set(seq_nrs)), (pid, seq_nrs)
            assert not any((pid, n) in self.dropped for n in seq_nrs), (pid, seq_nrs)
        assert all(r.payload is not None for r in self.pending)

    @invariant()
    def stored_offsets_pass_only_what_was_handled_or_a_placeholder(self) -> None:
        for r in self.by_time:
            offset = self.stored_offsets.get(r.slice)
            key = (r.persistence_id, r.seq_nr)
            if offset is not None and not offset.is_behind(r):
                handled = r.seq_nr in self.committed[r.persistence_id]
                assert handled or key in self.dropped or key in self.filtered, r

    @rule()
    def catch_up(self) -> None:
        self.commit()
        while page := self.read_page(3):
            for record in page:
                self.admit(self.sent(record), QUERY)
            self.commit()
        for pid, events in self.journal.items():
            handled = set(self.committed[pid])
            for event in events:
                key = (pid, event.seq_nr)
                if key in self.dropped:
                    continue
                if key not in self.filtered or event.seq_nr <= self.included_up_to[pid]:
                    assert event.seq_nr in handled, (key, sorted(handled))
        self.counts["caught up"] += 1


def test_placeholders_are_replayed_when_their_entity_is_included_and_never_handled() -> None:
    PlaceholderMachine.counts = counts = defaultdict[str, int](int)
    run_state_machine_as_test(
        PlaceholderMachine,
        settings=settings(max_examples=300, stateful_step_count=50, deadline=None),
    )
    for what in (
        "placeholders replayed",
        "gap replayed",
        "lookup found",
        "crash before commit",
        "caught up",
    ):
        assert counts[what] > 0, (what, dict(counts))
