"""The runner's admission over a real journal: the core's decision (`envelope_admission`)
with the runner's I/O; placeholders flow through it, and a gap after them is replayed from
the source, placeholders included."""

from __future__ import annotations

import msgspec

from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import EnvelopeSource, OffsetTracker
from fluvial.core.records import EventRecord
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._handlers import ExactlyOnce
from fluvial.projection._instance import Instance
from fluvial.projection._runner import Projection
from fluvial.projection._source import LocalJournalSource
from projection.projection_helpers import (
    ENTITY_TYPE,
    NAME,
    REGISTRY,
    Added,
    Appender,
    apply_to_model,
)

ALL = SliceRange(0, 1023)


def placeholder(record: EventRecord) -> EventRecord:
    """`record` as a stream carries it when a filter drops it."""
    return msgspec.structs.replace(record, payload=None)


async def test_placeholders_pass_the_runner_and_a_gap_after_them_replays_them(
    journal: SqliteJournal,
) -> None:
    one, two, three, four, five = await Appender(journal).append("a", 1, 2, 3, 4, 5)
    projection = Projection(NAME, ENTITY_TYPE, ExactlyOnce(apply_to_model))
    source = LocalJournalSource(journal, ENTITY_TYPE, ALL, projection.source)
    instance = Instance(source, REGISTRY, SqliteOffsetStore(journal.database), projection, ALL)
    instance.tracker = OffsetTracker(ALL, complete=True)
    query = EnvelopeSource.QUERY
    handed = await instance.admit([one, placeholder(two), placeholder(three)], query)
    assert [(e.seq_nr, e.event) for e in handed] == [(1, Added(1))]
    assert instance.tracker.seq_nr_of(one.persistence_id) == 3
    # Seq nr 5 is a gap: the replay from the journal starts at the first placeholder.
    handed = await instance.admit([five], EnvelopeSource.LIVE)
    assert [(e.seq_nr, e.event.amount) for e in handed] == [(2, 2), (3, 3), (4, 4), (5, 5)]
    assert await instance.admit([four, placeholder(two)], query) == []
