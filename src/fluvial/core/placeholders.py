"""Placeholders: events without payload (a filter or a transformation dropped them on the way),
which keep an entity's seq nrs gapless.

From a stream they move the entity's seq nr like a handled event, but the tracker remembers
that its latest seq nrs were seen only as placeholders (`SeenEntity.placeholders`), so that a
replay of them (a filter that now includes the entity asks for its history) is handled instead
of dropped as a duplicate: replayed events are judged against the highest seq nr handled,
stream events against the highest seen.
"""

from __future__ import annotations

from fluvial.core.offset_verdicts import (
    ACCEPTED,
    DUPLICATE,
    FILLS_PLACEHOLDER,
    RejectedBacktracking,
    RejectedSeqNr,
    Verdict,
)
from fluvial.core.records import EventRecord
from fluvial.core.seen_entities import SeenEntity


def validate_after_placeholders(
    record: EventRecord, seen: SeenEntity, *, replay: bool, backtracking: bool
) -> Verdict:
    """`OffsetTracker.validate` for an entity whose latest seq nrs were seen only as
    placeholders, for a `record` from a replay or (`backtracking` or not) a stream: a replay is
    judged against the highest seq nr handled, a stream against the highest seen; a gap is
    replayed from the first placeholder (the replay fills them too)."""
    handled = seen.handled_seq_nr
    if replay:
        if record.seq_nr <= handled:
            return DUPLICATE
        if record.seq_nr == handled + 1:
            return FILLS_PLACEHOLDER
        return RejectedSeqNr(handled + 1)
    if record.seq_nr <= seen.seq_nr:
        return DUPLICATE
    if record.seq_nr == seen.seq_nr + 1:
        return ACCEPTED
    if backtracking:
        return RejectedBacktracking(handled + 1)
    return RejectedSeqNr(handled + 1)


def seen_as_placeholder(seen: SeenEntity | EventRecord | None, record: EventRecord) -> SeenEntity:
    """The entity after a stream delivered `record` as a placeholder, given what was `seen` of
    it: its seq nr is seen, but not handled, until a replay fills it."""
    if seen is not None and seen.seq_nr == record.seq_nr - 1:
        placeholders = (seen.placeholders if isinstance(seen, SeenEntity) else 0) + 1
    else:  # first seen here: what precedes it precedes where the projection started
        placeholders = 1
    return SeenEntity(
        record.persistence_id, record.seq_nr, record.timestamp, record.slice, placeholders
    )


def filled(seen: SeenEntity | EventRecord, record: EventRecord) -> SeenEntity:
    """The entity after a replay delivered `record` at its first placeholder: handled, or a
    placeholder again (settled: a replay will not deliver more of it)."""
    remaining = seen.seq_nr - record.seq_nr  # the placeholders after it
    return SeenEntity(record.persistence_id, seen.seq_nr, seen.timestamp, seen.slice, remaining)
