"""The exactly-once machine: the handler's effects and the tracker's changes commit together
(or not at all), so every event is applied exactly once, in seq nr order per entity, with no
gap, across crashes and restarts with other slice ranges (`property.projection_machines`
describes the model)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from fluvial.core.offset_tracker import EnvelopeSource
from fluvial.core.records import EventRecord
from property.projection_machines import (
    EXERCISED,
    SETTINGS,
    Coverage,
    Instance,
    ProjectionMachine,
)


class ExactlyOnceMachine(ProjectionMachine):
    def __init__(self) -> None:
        self.committed: dict[str, list[int]] = defaultdict(list)
        super().__init__()

    def deliver(
        self, instance: Instance, records: list[EventRecord], source: EnvelopeSource
    ) -> None:
        # One transaction per source batch, as the runner does; `commit` runs it.
        for record in records:
            instance.pending.extend(self.admit(instance, record, source))

    def commit_instance(self, instance: Instance) -> None:
        """The handler's writes and the offsets, in one transaction."""
        for record in instance.pending:
            self.committed[record.persistence_id].append(record.seq_nr)
        instance.pending = []
        self.persist(instance)

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        self.commit_instance(data.draw(st.sampled_from(self.instances)))

    def crash(self) -> None:
        if any(i.pending for i in self.instances):
            self.coverage.saw("crash between handler and commit")

    @invariant()
    def applied_exactly_once_in_order(self) -> None:
        for pid, seq_nrs in self.committed.items():
            assert seq_nrs == list(range(1, len(seq_nrs) + 1)), (pid, seq_nrs)
            stored = self.stored_entities.get(pid)
            assert (stored.seq_nr if stored else 0) == len(seq_nrs), pid

    @invariant()
    def stored_offsets_never_run_ahead(self) -> None:
        assert self.stored_offsets_run_ahead_of(self.committed) == []

    @invariant()
    def the_query_will_deliver_what_is_not_handled(self) -> None:
        self.check_the_query_will_deliver_what_is_not_handled(self.committed)

    @precondition(lambda self: self.crashes > 0)
    @rule()
    def catch_up(self) -> None:
        """Each instance's query reads to the end, then its backtracking, committing after
        each page: everything, once."""
        for instance in self.instances:
            self.commit_instance(instance)
            while self.next_page(instance, 3):
                self.commit_instance(instance)
            self.backtrack(instance, instance.backtracking_due)
            self.commit_instance(instance)
        self.check_caught_up(self.committed)


def test_exactly_once_applies_every_event_once_in_order() -> None:
    ExactlyOnceMachine.coverage = coverage = Coverage()
    run_state_machine_as_test(ExactlyOnceMachine, settings=SETTINGS)
    for what in (*EXERCISED, "crash between handler and commit"):
        assert coverage.counts[what] > 0, (what, dict(coverage.counts))
