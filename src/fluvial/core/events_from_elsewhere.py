"""Which events written elsewhere a journal stores: the decision every journal shares.

An event from another journal (pushed by an edge, replicated from a replica) keeps its
persistence id and seq nr. Against the entity's highest stored seq nr it is either already
stored (a redelivery: nothing to do), the next one (store it), or beyond (a gap: the events in
between must come first). Pure: the journal passes what it has stored and writes what this says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from fluvial.core.records import EventRecord


class EventStored(msgspec.Struct, frozen=True, gc=False):
    """`write_from_elsewhere` stored the event: `record` as the journal now holds it (its
    `timestamp` is this journal's, its `write_timestamp` the origin's)."""

    record: EventRecord


class EventAlreadyStored(msgspec.Struct, frozen=True, gc=False):
    """`write_from_elsewhere` found the seq nr stored already and left it (a redelivery):
    the event counts as written. The stored one is not compared with it."""

    persistence_id: str
    seq_nr: int


class EventGap(msgspec.Struct, frozen=True, gc=False):
    """`write_from_elsewhere` did not store the event: the entity's highest stored seq nr is
    `highest_seq_nr`, below `seq_nr - 1`, so the events in between must come first (ask the
    origin for them from `highest_seq_nr + 1`)."""

    persistence_id: str
    seq_nr: int
    highest_seq_nr: int


class FromElsewhereDecision(msgspec.Struct, frozen=True, gc=False):
    """What to do with a call's events: `verdicts[i]` is None for an event to store, else why
    not; `stored` are the events to store, in order; `highest` the highest seq nr of each
    entity with stored events once they are."""

    verdicts: list[EventAlreadyStored | EventGap | None]
    stored: list[EventRecord]
    highest: dict[str, int]


def decide_from_elsewhere(
    events: Sequence[EventRecord], highest_stored: Callable[[str], int]
) -> FromElsewhereDecision:
    """Sort `events` into stored, already stored and gaps, in order: an event that follows
    one stored earlier in the same call is stored too. `highest_stored(pid)` is the journal's
    highest stored seq nr of an entity (0 for none), asked once per entity."""
    verdicts: list[EventAlreadyStored | EventGap | None] = []
    stored: list[EventRecord] = []
    highest: dict[str, int] = {}
    for record in events:
        pid = record.persistence_id
        known = highest.get(pid)
        if known is None:
            known = highest[pid] = highest_stored(pid)
        if record.seq_nr <= known:
            verdicts.append(EventAlreadyStored(pid, record.seq_nr))
        elif record.seq_nr == known + 1:
            verdicts.append(None)
            stored.append(record)
            highest[pid] = record.seq_nr
        else:
            verdicts.append(EventGap(pid, record.seq_nr, known))
    return FromElsewhereDecision(verdicts, stored, highest)
