"""The journal's answer to an entity's append: reply to the batch's commands, update the
entity's state, save a snapshot when its policy says so, then let the entity take its mail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import outcome
import trio

from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity._live_entity import LiveEntity, answer_all
from fluvial.entity._mailbox import Ask
from fluvial.entity._recovery import save_snapshot, should_snapshot
from fluvial.journal.api import SnapshotStore

if TYPE_CHECKING:
    from fluvial.entity._live_entities import LiveEntities


class BatchAnswers:
    """Answers the appends of every live entity (`LiveEntity.on_appended`)."""

    def __init__(
        self,
        entities: LiveEntities,
        nursery: trio.Nursery,
        snapshots: SnapshotStore | None,
        serializers: SerializerRegistry,
    ) -> None:
        self._entities = entities
        self._nursery = nursery
        self._snapshots = snapshots
        self._serializers = serializers

    def appended(self, live: LiveEntity, result: outcome.Outcome[Sequence[EventRecord]]) -> None:
        """The journal's answer to the append of `live.in_flight`: reply to its commands, then
        let the entity take its mail again. Runs in the journal's task, so it must not raise."""
        assert live.in_flight is not None
        decision, live.in_flight = live.in_flight, None
        leftovers = list(decision.asks[len(decision.decided) :]) if decision.stopped else None
        # A Value's type is tested first: `isinstance` of another type goes through the
        # ABC machinery of `outcome.Outcome`, a Python call per batch.
        if not isinstance(result, outcome.Value):
            assert isinstance(result, outcome.Error)
            # Nothing of the batch is stored; the state stays as it was. The decision says
            # which commands saw the unstored events and so share the error.
            answer_all(decision, result.error)
            live.reload = True
        else:
            stored = result.value  # not `unwrap()`: two calls less, and nothing to raise
            first_seq_nr = live.seq_nr + 1
            live.seq_nr += len(stored)
            live.state = decision.state
            answer_all(decision)
            if (
                self._snapshots is not None
                and live.behavior.snapshot_policy.enabled
                and not self._entities.closed
                and should_snapshot(live.behavior, live.key, first_seq_nr, decision.events)
            ):
                # The mailbox stays held: the next command waits until the snapshot is saved
                # (snapshots never pile up, and a reader after the reply can find it).
                self._nursery.start_soon(self._save_snapshot_then_resume, live, leftovers)
                return
        if leftovers is None:  # `_resume`, without a call per batch
            live.mailbox.release()
        else:
            self._entities.retire(live, leftovers)

    def _resume(self, live: LiveEntity, leftovers: list[Ask] | None) -> None:
        """After a batch: take the next mail, or retire if the batch stopped the entity."""
        if leftovers is not None:
            self._entities.retire(live, leftovers)
        else:
            live.mailbox.release()

    @trio.lowlevel.enable_ki_protection  # see `fluvial.entity._opening`
    async def _save_snapshot_then_resume(
        self, live: LiveEntity, leftovers: list[Ask] | None
    ) -> None:
        assert self._snapshots is not None
        try:
            await save_snapshot(
                self._snapshots,
                self._serializers,
                live.behavior,
                live.key,
                live.slice,
                live.state,
                live.seq_nr,
            )
        finally:
            self._resume(live, leftovers)
