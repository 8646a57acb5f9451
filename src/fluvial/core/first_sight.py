"""The first-sight rule: what a projection does with an entity it has never seen, met at a seq
nr n > 1.

Whether the events before n can still come depends on the journal the events come from, so the
rule is a property of the source (`Source.first_sight`), set on the offset tracker by the
runner; the projection runner imports no backend to choose it:

- `FirstSight.QUERY_IN_COMMIT_ORDER`, a journal with one writer (SQLite, memory): its
  timestamps are commit order, so the ordered query cannot skip an event; an entity it first
  shows at n > 1 had its earlier events before where this projection started: accepted. By
  another path (live, backtracking), the query has not shown those earlier events yet: a gap
  to replay.
- `FirstSight.PREVIOUS_OLDER_THAN_WINDOW`, a journal with concurrent writers (PostgreSQL,
  `fluvial.journal.api.HasConcurrentWriters`): an event can commit after a later timestamp was
  read, so seq nr n-1 may not have been delivered yet by any path. Whatever the path, the
  tracker asks for the timestamp of n-1 (`NeedsPreviousTimestamp`; the shell reads it with
  `Source.event_timestamp`) and accepts n only if n-1 is older than the tracker's `window`
  behind where the query has passed in the record's slice: that old, n-1 is behind what the
  query and the backtracking query cover (the window must be longer than the backtracking
  span), so it precedes where this projection started (a slice without events of its own has
  the offset the query's position gave it, `OffsetTracker.move_quiet_slices`: the query did
  pass it there). Otherwise it is a gap to replay
  (`RejectedSeqNr`, `RejectedBacktracking` from the backtracking query), from seq nr 1.
  A source that does not have n-1 (deleted) accepts n.
- `FirstSight.REPLAY_FROM_FIRST`, a source that may have left out an entity's earlier events
  on purpose (a consumer's filter excluded them: `fluvial.grpc` uses it for a stream id whose
  filter is or has been non-empty): whatever the journal and the path, an entity first met at
  n > 1 is a gap to replay from seq nr 1 (`RejectedSeqNr(1)`, `RejectedBacktracking(1)`), so
  its history is handled, in order, before n. An entity whose history is gone from the source
  replays what is left, and n is then accepted after it.
"""

from __future__ import annotations

import enum

import attrs

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.offset_verdicts import (
    ACCEPTED,
    NeedsPreviousTimestamp,
    RejectedBacktracking,
    RejectedSeqNr,
    Verdict,
)
from fluvial.core.records import EventRecord


class FirstSight(enum.Enum):
    """How an offset tracker judges an entity it has never seen, met above seq nr 1 (see the
    module docstring): a property of the source's journal."""

    QUERY_IN_COMMIT_ORDER = "query in commit order"  # one writer: SQLite, memory
    PREVIOUS_OLDER_THAN_WINDOW = "previous older than window"  # concurrent writers: PostgreSQL
    REPLAY_FROM_FIRST = "replay from first"  # earlier events may have been filtered out


@attrs.frozen
class PreviousEvent:
    """The source's answer to `NeedsPreviousTimestamp`: the `timestamp` of the event before
    (None: the source does not have it, e.g. it was deleted)."""

    timestamp: int | None


def judge_first_sight(
    rule: FirstSight,
    record: EventRecord,
    source: EnvelopeSource,
    previous: PreviousEvent | None,
    *,
    slice_offset: int | None,
    window: int,
) -> Verdict:
    """The verdict for `record` (seq nr > 1) of an entity the tracker has never seen, not from
    a replay; `slice_offset` is the timestamp the query has passed in the record's slice (None:
    none yet), `previous` what the source said of seq nr n-1 (None: not asked yet)."""
    if rule is FirstSight.REPLAY_FROM_FIRST:
        pass  # a gap from 1, below
    elif rule is FirstSight.QUERY_IN_COMMIT_ORDER:
        if source is EnvelopeSource.QUERY:
            return ACCEPTED
    elif previous is None:
        return NeedsPreviousTimestamp(record.persistence_id, record.seq_nr - 1)
    elif previous.timestamp is None or (
        slice_offset is not None and previous.timestamp < slice_offset - window
    ):
        return ACCEPTED
    if source is EnvelopeSource.BACKTRACKING:
        return RejectedBacktracking(1)
    return RejectedSeqNr(1)
