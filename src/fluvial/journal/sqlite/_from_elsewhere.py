"""The SQLite journal's write of events from elsewhere (`WriteFromElsewhere`), as it runs in
the writer's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from fluvial.core.events_from_elsewhere import EventAlreadyStored, EventGap, decide_from_elsewhere
from fluvial.core.records import EventRecord
from fluvial.journal.sqlite._event_rows import (
    ENTITY_KEYS,
    FOLLOWS_STORED,
    INSERT_TRACED_EVENT,
    traced_event_row,
)
from fluvial.journal.sqlite._transaction import WriteTransaction


class FromElsewhereWrite:
    """The writer's part of `write_from_elsewhere`: which events follow their entity's stored
    ones (the writer's remembered seq nrs, kept up to date), inserting those in one statement.

    Returns the first timestamp of the stored events; leaves in `verdicts` the answer for each
    event (None for a stored one, whose record the caller stamps) and in `stored` those
    stored. Both are filled again if the writer runs it again (after a rollback).
    """

    def __init__(self, events: Sequence[EventRecord]) -> None:
        self.events = events
        self.verdicts: list[EventAlreadyStored | EventGap | None] = []
        self.stored: list[EventRecord] = []

    def __call__(self, txn: WriteTransaction) -> int:
        decision = decide_from_elsewhere(
            self.events, lambda pid: txn.highest_seq_nr(FOLLOWS_STORED, pid)
        )
        self.verdicts, self.stored, highest = decision.verdicts, decision.stored, decision.highest
        if not self.stored:
            return 0
        first = txn.next_timestamps(len(self.stored))
        txn.ensure_keys(ENTITY_KEYS, (record.persistence_id for record in self.stored))
        txn.connection.executemany(
            INSERT_TRACED_EVENT,
            [(*traced_event_row(r), first + i) for i, r in enumerate(self.stored)],
        )
        for pid in dict.fromkeys(record.persistence_id for record in self.stored):
            txn.appended(pid, highest[pid])
        return first
