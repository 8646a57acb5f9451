"""What a projection instance does with each envelope: the decision, without I/O.

For every record a source delivers, `admit` asks the offset tracker for its verdict and acts
on it in the tracker: it counts an accepted record as handled, and it moves the record's slice
offset when (and only when) the record came by the reliable, timestamp-ordered query. What is
left for the shell is the I/O, named by the answer:

- `HANDLE`: decode the record and hand it to the handler (the tracker already counts it);
- `DROP`: nothing to hand over (a duplicate, a placeholder, or a replayed event that cannot
  fill its gap);
- `LookUp`: the entity left memory: load its stored seq nr, `tracker.learn` it, admit again;
- `LookUpTimestamp`: an entity never seen, met above seq nr 1, from a source with concurrent
  writers (the first-sight rule, `fluvial.core.first_sight`): read the timestamp of its event
  before (`Source.event_timestamp`) and admit again with `previous=PreviousEvent(timestamp)`;
- `Replay`: a gap: read the entity's events `from_seq_nr..to_seq_nr` and admit each with
  `EnvelopeSource.REPLAY` (`admit_replayed` does that loop), handling those answered `HANDLE`;
- `Load`: accepted, but it came without its payload: load the event (`Source.load_event`) and
  admit the loaded record with `loaded=True`, then do what that answers (`HANDLE` it, or
  `DROP` it as a placeholder).

Which records are placeholders (events without payload that keep seq nrs gapless, never
handed over): the backtracking query reads without payloads, since most of what it finds is
duplicates, so a record without payload from `EnvelopeSource.BACKTRACKING` is not loaded yet
(its payload is fetched only once it is accepted), and a placeholder only if its loaded form
still has none. From every other path (query, live, replay), and once loaded, a record whose
`payload is None` is a placeholder.

The runner (`fluvial.projection._instance`) and the property machines of the tracker
(tests/property/projection_machines.py) both call this module, so what the
machines check is what the runner does.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

import attrs

from fluvial.core.offset_tracker import (
    ACCEPTED,
    FILLS_PLACEHOLDER,
    EnvelopeSource,
    NeedsPreviousTimestamp,
    NeedsStoredSeqNr,
    OffsetTracker,
    PreviousEvent,
    RejectedBacktracking,
    RejectedSeqNr,
)
from fluvial.core.records import EventRecord

QUERY = EnvelopeSource.QUERY
REPLAY = EnvelopeSource.REPLAY
BACKTRACKING = EnvelopeSource.BACKTRACKING


class Outcome(enum.Enum):
    """An admission that needs no I/O: what the shell does with the record."""

    HANDLE = "handle"  # hand it to the handler; the tracker counts it as handled
    DROP = "drop"  # nothing to hand over


HANDLE: Final = Outcome.HANDLE
DROP: Final = Outcome.DROP


@attrs.frozen
class LookUp:
    """The entity is not in memory: load its stored seq nr, `learn` it, and admit the record
    again. Nothing was changed (the slice offset has not moved either)."""

    persistence_id: str


@attrs.frozen
class Replay:
    """A gap before the record: read the entity's events `from_seq_nr` .. `to_seq_nr` (the
    record's own seq nr) and admit each as `EnvelopeSource.REPLAY`. The record itself was not
    handled; its slice offset has moved if it came by the query."""

    persistence_id: str
    from_seq_nr: int
    to_seq_nr: int


@attrs.frozen
class LookUpTimestamp:
    """The first-sight rule asks for the timestamp of the entity's event `seq_nr` (the one
    before the record's): read it from the source and admit the record again with
    `previous=PreviousEvent(timestamp)` (None if the source does not have it). Nothing was
    changed (the slice offset has not moved either)."""

    persistence_id: str
    seq_nr: int


@attrs.frozen
class Load:
    """Accepted, but delivered without its payload (by the backtracking query): load the
    event with its payload and admit the loaded record again with `loaded=True`. Nothing was
    changed."""

    persistence_id: str
    seq_nr: int


Admission = Outcome | LookUp | LookUpTimestamp | Replay | Load


def admit(
    tracker: OffsetTracker,
    record: EventRecord,
    source: EnvelopeSource,
    *,
    loaded: bool = False,
    previous: PreviousEvent | None = None,
) -> Admission:
    """Decide what to do with `record`, delivered by `source`, and record it in `tracker`.

    A record without payload is a placeholder (see the module docstring for the one exception:
    a backtracking record not `loaded` yet, answered `Load` if accepted): never handed over;
    from a stream its seq nr counts as seen but not handled (`OffsetTracker.saw_placeholder`),
    so a later replay of it is handled; from a replay it is settled.

    Promises: an answer `HANDLE` counts the record as handled; only `EnvelopeSource.QUERY`
    moves the record's slice offset, and `BACKTRACKING` where the query has already been in
    this run (`OffsetTracker.passed`): live and replayed records arrive out of timestamp
    order, so moving the offset for them could pass an event the query has not delivered
    yet, which a restart would then never see; a replayed record never asks for
    another replay (a gap within a replay is left to the query). `previous` is the source's
    answer to a `LookUpTimestamp` for this record: pass it again when admitting the record
    once more (after a `Load`). Raises nothing.
    """
    verdict = tracker.validate(record, source, previous)
    if verdict.__class__ is NeedsStoredSeqNr:
        return LookUp(record.persistence_id)
    if isinstance(verdict, NeedsPreviousTimestamp):
        return LookUpTimestamp(verdict.persistence_id, verdict.seq_nr)
    if verdict is ACCEPTED and record.payload is None and source is BACKTRACKING and not loaded:
        return Load(record.persistence_id, record.seq_nr)  # nothing changed yet
    if source is QUERY or source is BACKTRACKING:  # the rule for the slice offset: see above
        tracker.passed(record, source)
    if verdict is ACCEPTED:
        if record.payload is not None:
            tracker.accept(record)
            return HANDLE
        if source is REPLAY:  # dropped by the producer even in a replay: settled
            tracker.accept(record)
        else:
            tracker.saw_placeholder(record)
        return DROP
    if verdict is FILLS_PLACEHOLDER:
        tracker.fill_placeholder(record)
        return DROP if record.payload is None else HANDLE
    match verdict:
        case RejectedSeqNr(expected) | RejectedBacktracking(expected) if source is not REPLAY:
            return Replay(record.persistence_id, expected, record.seq_nr)
        case _:  # a duplicate, or a gap within a replay
            return DROP


def admit_replayed(tracker: OffsetTracker, replayed: Iterable[EventRecord]) -> list[EventRecord]:
    """Admit the events a `Replay` read, in seq nr order: those to hand to the handler, in
    order (the tracker counts them as handled). Raises nothing."""
    return [event for event in replayed if admit(tracker, event, REPLAY) is HANDLE]
