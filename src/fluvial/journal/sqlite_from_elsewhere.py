"""The SQLite journal's write of events from elsewhere (`WriteFromElsewhere`), as it runs in
the writer's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from fluvial.core.records import EventRecord
from fluvial.journal.api import EventAlreadyStored, EventGap
from fluvial.journal.sqlite_event_rows import (
    ENTITY_KEYS,
    FOLLOWS_STORED,
    INSERT_TRACED_EVENT,
    traced_event_row,
)
from fluvial.journal.sqlite_transaction import WriteTransaction


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
        self.verdicts, self.stored = [], []
        highest: dict[str, int] = {}
        for record in self.events:
            pid = record.persistence_id
            known = highest.get(pid)
            if known is None:
                known = highest[pid] = txn.highest_seq_nr(FOLLOWS_STORED, pid)
            if record.seq_nr <= known:
                self.verdicts.append(EventAlreadyStored(pid, record.seq_nr))
            elif record.seq_nr == known + 1:
                self.verdicts.append(None)
                self.stored.append(record)
                highest[pid] = record.seq_nr
            else:
                self.verdicts.append(EventGap(pid, record.seq_nr, known))
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
