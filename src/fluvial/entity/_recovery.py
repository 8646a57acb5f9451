"""An entity's state from storage, and the snapshots that make recovering it fast.

The events are the source of truth: a snapshot only saves reading the events before it, so an
unreadable snapshot is ignored, and a snapshot that cannot be taken or saved is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fluvial.core.behavior import EventSourcedBehavior
from fluvial.core.errors import DataError
from fluvial.core.records import SnapshotRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.api import Journal, SnapshotStore
from fluvial.journal.queries import events_by_persistence_id

log = logging.getLogger("fluvial.entity")


async def recover(
    journal: Journal,
    snapshots: SnapshotStore | None,
    serializers: SerializerRegistry,
    empty_state: Any,
    event_handler: Callable[[Any, Any], Any],
    persistence_id: str,
) -> tuple[Any, int]:
    """The entity's state and the seq nr it is stored up to: the latest readable snapshot,
    then the events after it, folded with `event_handler` (the entity's, its context bound).
    Raises the journal's errors, and `DataError` for an event that cannot be read (nothing is
    skipped)."""
    state, seq_nr = empty_state, 0
    if snapshots is not None:
        snapshot = await snapshots.load_snapshot(persistence_id)
        if snapshot is not None:
            try:
                state = serializers.decode(
                    snapshot.payload, persistence_id=persistence_id, seq_nr=snapshot.seq_nr
                )
                seq_nr = snapshot.seq_nr
            except DataError as exc:
                # The events are the source of truth: recover from all of them instead.
                log.warning("%s: ignoring an unreadable snapshot: %s", persistence_id, exc)
    async for record in events_by_persistence_id(journal, persistence_id, seq_nr + 1):
        assert record.payload is not None, "a journal holds no placeholders"
        event = serializers.decode(
            record.payload, persistence_id=persistence_id, seq_nr=record.seq_nr
        )
        state = event_handler(state, event)
        seq_nr = record.seq_nr
    return state, seq_nr


def should_snapshot(
    behavior: EventSourcedBehavior[Any, Any, Any],
    persistence_id: str,
    first_seq_nr: int,
    events: list[Any],
) -> bool:
    """Whether the policy asks for a snapshot after `events`; a failing policy is logged
    and answers no (snapshots only speed up recovery)."""
    try:
        return behavior.snapshot_policy.should_snapshot(first_seq_nr, events)
    except Exception:
        log.warning("%s: the snapshot policy failed", persistence_id, exc_info=True)
        return False


async def save_snapshot(
    snapshots: SnapshotStore,
    serializers: SerializerRegistry,
    behavior: EventSourcedBehavior[Any, Any, Any],
    persistence_id: str,
    slice_: int,
    state: Any,
    seq_nr: int,
) -> None:
    """Save a snapshot of `state` after `seq_nr`. Failures (of the serializer or the
    store) are logged: the events are stored, and snapshots only speed up recovery."""
    try:
        await snapshots.save_snapshot(
            SnapshotRecord(
                persistence_id=persistence_id,
                seq_nr=seq_nr,
                entity_type=behavior.entity_type,
                slice=slice_,
                payload=serializers.encode(state),
            ),
            keep=behavior.snapshot_policy.keep,
        )
    except Exception:
        log.warning(
            "%s: saving the snapshot at seq nr %d failed", persistence_id, seq_nr, exc_info=True
        )
