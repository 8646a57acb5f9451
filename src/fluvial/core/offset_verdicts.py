"""What the offset tracker answers for an envelope (`OffsetTracker.validate`), and what the
shell does with each answer."""

from __future__ import annotations

import attrs


@attrs.frozen
class Accepted:
    """The next seq nr of the entity (or the first one a query shows): handle it."""


@attrs.frozen
class Duplicate:
    """Already handled: drop it."""


@attrs.frozen
class RejectedSeqNr:
    """A gap: events `expected_seq_nr` .. before this one must be replayed first."""

    expected_seq_nr: int


@attrs.frozen
class RejectedBacktracking:
    """The backtracking query found a gap: replay from `expected_seq_nr`."""

    expected_seq_nr: int


@attrs.frozen
class NeedsStoredSeqNr:
    """The entity is not in memory: look up its stored seq nr, `learn` it, validate again."""

    persistence_id: str


@attrs.frozen
class NeedsPreviousTimestamp:
    """The entity was never seen and this is not its first event, from a source with
    concurrent writers (`fluvial.core.first_sight`): get the timestamp of its event `seq_nr`
    (the one before) from the source and validate again with it."""

    persistence_id: str
    seq_nr: int


@attrs.frozen
class FillsPlaceholder:
    """A replayed event at a seq nr seen so far only as a placeholder, the first of them: handle
    it (the entity's seq nr stays where the stream has it)."""


Verdict = (
    Accepted
    | Duplicate
    | FillsPlaceholder
    | RejectedSeqNr
    | RejectedBacktracking
    | NeedsStoredSeqNr
    | NeedsPreviousTimestamp
)

# `validate` answers these very objects, so that the shell may compare with `is`.
ACCEPTED = Accepted()
DUPLICATE = Duplicate()
FILLS_PLACEHOLDER = FillsPlaceholder()
