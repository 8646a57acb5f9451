"""Writing events from elsewhere under any redelivery: batches of an origin's events, repeated,
reordered and with holes, give the SQLite and the memory journal the same answers as a tiny
model (per entity: at or below the highest stored, already stored; the next, stored; beyond,
a gap), and each ends holding exactly the gapless prefix of every entity's events."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import EventAlreadyStored, EventGap, EventStored, WriteFromElsewhereResult
from fluvial.journal.memory._journal import MemoryJournal
from fluvial.journal.queries import events_by_persistence_id
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.testing.journal_contract import JournalUnderTest

ENTITIES = [PersistenceId("Pushed", f"e|{n}") for n in range(3)]
MAX_SEQ_NR = 6


def origin_event(entity: int, seq_nr: int) -> EventRecord:
    """Event `seq_nr` of entity `entity` as the origin journal holds it."""
    pid = ENTITIES[entity]
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=SerializedPayload("pushed.Event", 1, f"{entity}#{seq_nr}".encode()),
        write_timestamp=1_000 * seq_nr + entity,
        replication=ReplicationMetadata("edge", seq_nr, VersionVector.of({"edge": seq_nr})),
    )


# A delivery is a batch of runs: an entity's events from some seq nr on (a sender resending
# from a point, as after a lost answer), several entities' runs interleaved in one batch.
RUNS = st.tuples(
    st.integers(0, len(ENTITIES) - 1), st.integers(1, MAX_SEQ_NR), st.integers(1, 4)
).map(lambda run: [(run[0], n) for n in range(run[1], min(run[1] + run[2], MAX_SEQ_NR + 1))])
DELIVERIES = st.lists(
    st.lists(RUNS, max_size=4).map(lambda runs: [event for run in runs for event in run]),
    max_size=10,
)


def model_answers(highest: dict[str, int], batch: list[EventRecord]) -> list[tuple[str, str, int]]:
    """What `write_from_elsewhere` answers for `batch`, updating `highest`."""
    answers = []
    for record in batch:
        known = highest.get(record.persistence_id, 0)
        if record.seq_nr <= known:
            answers.append(("already", record.persistence_id, record.seq_nr))
        elif record.seq_nr == known + 1:
            highest[record.persistence_id] = record.seq_nr
            answers.append(("stored", record.persistence_id, record.seq_nr))
        else:
            answers.append(("gap", record.persistence_id, known))
    return answers


def as_answers(results: list[WriteFromElsewhereResult]) -> list[tuple[str, str, int]]:
    answers = []
    for result in results:
        match result:
            case EventStored(record):
                answers.append(("stored", record.persistence_id, record.seq_nr))
            case EventAlreadyStored(pid, seq_nr):
                answers.append(("already", pid, seq_nr))
            case EventGap(pid, _, highest):
                answers.append(("gap", pid, highest))
    return answers


async def deliver(
    journal: JournalUnderTest, deliveries: list[list[tuple[int, int]]]
) -> dict[str, int]:
    """Write `deliveries` in order, checking each answer against the model; return the
    highest seq nr stored per persistence id."""
    highest: dict[str, int] = {}
    for delivery in deliveries:
        batch = [origin_event(entity, seq_nr) for entity, seq_nr in delivery]
        results = await journal.write_from_elsewhere(batch)
        assert as_answers(results) == model_answers(highest, batch)
    for entity, pid in enumerate(ENTITIES):
        stored = [r async for r in events_by_persistence_id(journal, str(pid))]
        expected = [origin_event(entity, n) for n in range(1, highest.get(str(pid), 0) + 1)]
        assert [msgspec.structs.replace(r, timestamp=0) for r in stored] == expected
    return highest


@settings(max_examples=60, deadline=None)
@given(DELIVERIES)
def test_any_redelivery_stores_each_event_once_in_order(
    deliveries: list[list[tuple[int, int]]],
) -> None:
    async def run() -> tuple[dict[str, int], dict[str, int]]:
        in_memory = await deliver(MemoryJournal(), deliveries)
        with tempfile.TemporaryDirectory() as directory:
            async with open_sqlite_journal(Path(directory) / "journal.db") as journal:
                return in_memory, await deliver(journal, deliveries)

    in_memory, in_sqlite = trio.run(run)
    assert in_memory == in_sqlite
