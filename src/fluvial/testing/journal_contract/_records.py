"""What the contract tests build and read: records of deterministic entities, and reads
bounded in time so that a looping query fails its test instead of hanging the suite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec
import trio
import trio.testing

from fluvial.core.ids import PersistenceId, ReplicatedPersistenceId, SliceRange
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import MAX_TIMESTAMP, EventRecord, SnapshotRecord
from fluvial.core.replication_metadata import ReplicationMetadata
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import Journal, SnapshotStore, WriteFromElsewhere
from fluvial.journal.queries import (
    current_events_by_slices,
    events_by_persistence_id,
)

# A bug in a follower or a writer must fail its test, not hang the suite.
TIMEOUT = 10.0

ENTITY_TYPE = "ContractA"
OTHER_ENTITY_TYPE = "ContractB"
LOW = SliceRange(0, 511)
HIGH = SliceRange(512, 1023)


class JournalUnderTest(Journal, SnapshotStore, WriteFromElsewhere, Protocol):
    """One object that is the journal, its snapshot store and its writer of events from
    elsewhere, as the contract tests it."""


def entity_ids(entity_type: str, slices: SliceRange, count: int) -> list[PersistenceId]:
    """`count` persistence ids of `entity_type` whose slices are in `slices` (deterministic)."""
    found: list[PersistenceId] = []
    n = 0
    while len(found) < count:
        pid = PersistenceId(entity_type, f"entity-{n}")
        n += 1
        if pid.slice in slices:
            found.append(pid)
    return found


# An entity's stream id: a plain one, or a replicated entity's at one replica (whose events
# carry replication metadata: only those may).
AnyId = PersistenceId | ReplicatedPersistenceId


def replicated_ids(
    entity_type: str, slices: SliceRange, count: int, replica: str = "here"
) -> list[ReplicatedPersistenceId]:
    """`count` persistence ids of replicated entities of `entity_type` at `replica`, whose
    slices are in `slices` (deterministic)."""
    found: list[ReplicatedPersistenceId] = []
    n = 0
    while len(found) < count:
        rid = ReplicatedPersistenceId(entity_type, f"entity-{n}", replica)
        n += 1
        if rid.slice in slices:
            found.append(rid)
    return found


def event(
    pid: AnyId,
    seq_nr: int,
    *,
    tags: frozenset[str] = frozenset(),
    data: bytes | None = None,
    write_timestamp: int = 0,
    replication: ReplicationMetadata | None = None,
) -> EventRecord:
    """An event record as an entity would hand it to `Journal.append` (no timestamp)."""
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=SerializedPayload(
            "contract.Event", 1, f"{pid}#{seq_nr}".encode() if data is None else data
        ),
        tags=tags,
        write_timestamp=write_timestamp,
        replication=replication,
    )


def events(pid: AnyId, first_seq_nr: int, count: int) -> list[EventRecord]:
    """A batch of `count` consecutive events of `pid` from `first_seq_nr`."""
    return [event(pid, seq_nr) for seq_nr in range(first_seq_nr, first_seq_nr + count)]


def snapshot(pid: PersistenceId, seq_nr: int) -> SnapshotRecord:
    """A snapshot record of `pid` at `seq_nr`, as an entity would hand it to `save_snapshot`."""
    return SnapshotRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=SerializedPayload("contract.State", 2, f"state of {pid} at {seq_nr}".encode()),
    )


def without_timestamp(records: Sequence[EventRecord]) -> list[EventRecord]:
    """`records` as they were before the journal stamped them (a write timestamp equal to
    the timestamp was the journal's too)."""
    return [
        msgspec.structs.replace(
            r,
            timestamp=0,
            write_timestamp=0 if r.write_timestamp == r.timestamp else r.write_timestamp,
        )
        for r in records
    ]


def timestamp_order(records: Sequence[EventRecord]) -> list[EventRecord]:
    """`records` in the order an events-by-slices query returns them."""
    return sorted(records, key=lambda r: (r.timestamp, r.persistence_id, r.seq_nr))


async def snapshot_seq_nr(
    snapshots: SnapshotStore, pid: PersistenceId, max_seq_nr: int
) -> int | None:
    """The seq nr of the snapshot `load_snapshot(pid, max_seq_nr)` returns, None if none."""
    loaded = await snapshots.load_snapshot(str(pid), max_seq_nr)
    return None if loaded is None else loaded.seq_nr


async def read_all(journal: Journal, pid: AnyId) -> list[EventRecord]:
    """Every stored event of `pid`, bounded in time so that a looping query fails."""
    with trio.fail_after(TIMEOUT):
        return [record async for record in events_by_persistence_id(journal, str(pid))]


async def current_by_slices(
    journal: Journal,
    entity_type: str,
    slices: SliceRange,
    offset: TimestampOffset | None = None,
    *,
    to_timestamp: int = MAX_TIMESTAMP,
    with_payloads: bool = True,
    exclude_origin: str | None = None,
    page_size: int = 1000,
) -> list[EventRecord]:
    """The events a consumer would read now, bounded in time so that a looping query fails."""
    with trio.fail_after(TIMEOUT):
        return [
            record
            async for record in current_events_by_slices(
                journal,
                entity_type,
                slices,
                offset,
                to_timestamp=to_timestamp,
                with_payloads=with_payloads,
                exclude_origin=exclude_origin,
                page_size=page_size,
            )
        ]
