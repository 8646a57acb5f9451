"""The decision both journals take for events written elsewhere: stored, already stored, gap."""

from __future__ import annotations

from fluvial.core.events_from_elsewhere import EventAlreadyStored, EventGap, decide_from_elsewhere
from fluvial.core.records import EventRecord


def record(pid: str, seq_nr: int) -> EventRecord:
    return EventRecord(persistence_id=pid, seq_nr=seq_nr, entity_type="T", slice=0, payload=None)


def test_events_are_sorted_against_the_stored_seq_nrs_and_each_other() -> None:
    asked: list[str] = []

    def highest_stored(pid: str) -> int:
        asked.append(pid)
        return {"T|a": 2}.get(pid, 0)

    events = [record("T|a", 2), record("T|a", 3), record("T|a", 5), record("T|b", 1)]
    decision = decide_from_elsewhere(events, highest_stored)
    assert decision.verdicts == [EventAlreadyStored("T|a", 2), None, EventGap("T|a", 5, 3), None]
    assert decision.stored == [events[1], events[3]]
    assert decision.highest == {"T|a": 3, "T|b": 1}
    assert asked == ["T|a", "T|b"]  # once per entity
