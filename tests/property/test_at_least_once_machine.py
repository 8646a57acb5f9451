"""The at-least-once machine: effects happen at once, offsets are saved every `SAVE_EVERY`
envelopes or when the timer says, so every event is applied at least once, in order, with no
gap, and again only after a crash and only if its offset was not saved yet
(`property.projection_machines` describes the model)."""

from __future__ import annotations

import itertools
from collections import defaultdict

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from fluvial.core.offset_tracker import EnvelopeSource
from fluvial.core.records import EventRecord
from property.projection_machines import (
    EXERCISED,
    SAVE_EVERY,
    SETTINGS,
    Coverage,
    Instance,
    ProjectionMachine,
)


class AtLeastOnceMachine(ProjectionMachine):
    def __init__(self) -> None:
        self.applied: dict[str, list[int]] = defaultdict(list)
        self.saved_at_crash: dict[str, int] | None = None  # None: no crash yet
        super().__init__()

    def deliver(
        self, instance: Instance, records: list[EventRecord], source: EnvelopeSource
    ) -> None:
        # As `_consume_at_least_once`: handle as admitted, save every SAVE_EVERY envelopes.
        for record in records:
            for event in self.admit(instance, record, source):
                self.apply(event)
                instance.unsaved += 1
            if instance.unsaved >= SAVE_EVERY:
                self.save_instance(instance)

    def apply(self, event: EventRecord) -> None:
        pid, seq_nr = event.persistence_id, event.seq_nr
        applied = self.applied[pid]
        high = max(applied, default=0)
        assert seq_nr <= high + 1, f"{pid}#{seq_nr} applied after #{high}: a gap"
        if seq_nr <= high:
            # Again: only after a crash, and only what the crash left unsaved.
            assert self.saved_at_crash is not None, f"{pid}#{seq_nr} again with no crash"
            assert seq_nr > self.saved_at_crash.get(pid, 0), f"{pid}#{seq_nr} was saved"
            self.coverage.saw("repeated after a crash")
        applied.append(seq_nr)

    def save_instance(self, instance: Instance) -> None:
        self.persist(instance)
        instance.unsaved = 0

    @rule(data=st.data())
    def save(self, data: st.DataObject) -> None:
        """`save_after` elapsed."""
        self.save_instance(data.draw(st.sampled_from(self.instances)))

    def crash(self) -> None:
        if any(i.unsaved for i in self.instances):
            self.coverage.saw("crash with unsaved offsets")
        self.saved_at_crash = {pid: e.seq_nr for pid, e in self.stored_entities.items()}

    @invariant()
    def applied_in_order_with_no_gap(self) -> None:
        for pid, seq_nrs in self.applied.items():
            # Each application is the next seq nr or a step back (after a crash).
            for before, after in itertools.pairwise(seq_nrs):
                assert after == before + 1 or after <= before, (pid, seq_nrs)
            stored = self.stored_entities.get(pid)
            assert (stored.seq_nr if stored else 0) <= max(seq_nrs, default=0), pid

    @invariant()
    def stored_offsets_never_run_ahead(self) -> None:
        assert self.stored_offsets_run_ahead_of(self.applied) == []

    @invariant()
    def the_query_will_deliver_what_is_not_handled(self) -> None:
        self.check_the_query_will_deliver_what_is_not_handled(self.applied)

    @precondition(lambda self: self.crashes > 0)
    @rule()
    def catch_up(self) -> None:
        for instance in self.instances:
            while self.next_page(instance, 3):
                pass
            self.backtrack(instance, instance.backtracking_due)
            self.save_instance(instance)
        self.check_caught_up(self.applied)


def test_at_least_once_applies_every_event_and_repeats_only_after_a_crash() -> None:
    AtLeastOnceMachine.coverage = coverage = Coverage()
    run_state_machine_as_test(AtLeastOnceMachine, settings=SETTINGS)
    for what in (*EXERCISED, "crash with unsaved offsets", "repeated after a crash"):
        assert coverage.counts[what] > 0, (what, dict(coverage.counts))
