"""One run of a projection instance: its source, its tracker, and admission of envelopes.

`Instance.run` loads the offsets, starts the source and hands its batches to the handler
kind's consumer (`_exactly_once.py`, `_at_least_once.py`); the consumers take the offsets to
save from `Instance.take_changes`, which moves the quiet slices' offsets every
`Projection.quiet_slices_every` seconds. Admission is
`fluvial.core.envelope_admission`'s decision for each record, and this module's I/O for it,
all through the `Source` and `OffsetStore` protocols: look up an entity that left memory,
read the timestamp the first-sight rule asks for, replay a gap from the source, load the
payload of an accepted record that came without one, decode what is accepted → the envelopes
to hand to the handler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from fluvial.core.envelope_admission import (
    DROP,
    HANDLE,
    REPLAY,
    Admission,
    Load,
    LookUp,
    LookUpTimestamp,
    Replay,
    admit,
    admit_replayed,
)
from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.errors import DataError, FluvialError
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import OffsetChanges, OffsetTracker, PreviousEvent
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.projection._supervision import open_supervisor
from fluvial.projection.api import OffsetStore, QueryReached, Source, SourceMessage

if TYPE_CHECKING:
    from fluvial.projection._runner import Projection

log = logging.getLogger("fluvial.projection")

E = TypeVar("E")
T = TypeVar("T")
Arrival = tuple[EventRecord, EnvelopeSource]


class HandlerFailed(FluvialError):
    """The recovery strategy gave up on an envelope (the `__cause__` is why): restart the
    instance. `persistence_id` and `seq_nr` name it (the first of a group)."""

    def __init__(self, persistence_id: str, seq_nr: int) -> None:
        super().__init__(f"{persistence_id} seq nr {seq_nr}")
        self.persistence_id = persistence_id
        self.seq_nr = seq_nr


class Instance(Generic[E, T]):
    """A projection instance over one slice range, reading `source` and keeping its offsets
    in `store`, whose transaction is a `T`; `run` is one attempt, from the store."""

    def __init__(
        self,
        source: Source,
        serializers: SerializerRegistry,
        store: OffsetStore[T],
        projection: Projection[E, T],
        slices: SliceRange,
    ) -> None:
        self.source = source
        self.serializers = serializers
        self.store = store
        self.projection = projection
        self.name = projection.name
        self.slices = slices
        self.tracker = OffsetTracker(slices, first_sight=source.first_sight)
        self.made_progress = False
        self._quiet_due = math.inf  # when the quiet slices' offsets move next

    async def run(
        self,
        ready: Callable[[], None],
        consume: Callable[[Instance[E, T], trio.MemoryReceiveChannel[SourceMessage]], Any],
    ) -> None:
        """Load the offsets, start the source, call `ready`, and `consume` its batches until
        cancelled; the first error of the source or the consumer is raised as itself."""
        self.made_progress = False
        await self.reload()
        self._quiet_due = trio.current_time() + self.projection.quiet_slices_every
        send, receive = trio.open_memory_channel[SourceMessage](4)
        async with open_supervisor() as supervisor:
            await supervisor.start(self.source.run, self.tracker.resume_offset(), send)
            ready()
            await supervisor.run(consume, self, receive)

    async def reload(self) -> None:
        """Start again from what the store holds."""
        self.tracker = await self.store.load(
            self.name, self.slices, window=int(self.projection.window * 1_000_000)
        )
        # The first-sight rule is the source's (its journal's writers), not the store's.
        self.tracker.first_sight = self.source.first_sight

    def quiet_slices_due(self) -> float:
        """When the quiet slices' offsets move next (inf: the query has not come further
        since they last moved): an idle instance saves them then, with nothing else."""
        return self._quiet_due if self.tracker.quiet_slices_behind else math.inf

    def move_quiet_slices_if_due(self) -> bool:
        """Every `Projection.quiet_slices_every` seconds: move the offsets of the slices the
        query passed without an event of theirs (`OffsetTracker.move_quiet_slices`). Whether
        any moved: their changes wait in the tracker. Only between admissions."""
        now = trio.current_time()
        if now < self._quiet_due:
            return False
        self._quiet_due = now + self.projection.quiet_slices_every
        return self.tracker.move_quiet_slices() > 0

    def take_changes(self) -> OffsetChanges:
        """The tracker's changes to save, the quiet slices moved if that is due."""
        self.move_quiet_slices_if_due()
        return self.tracker.take_changes()

    def committed(self, changes: OffsetChanges) -> None:
        """`changes` are stored."""
        # Progress is an envelope handled for good. One handled again after a restart (its
        # offset was not saved) or a duplicate passed again is none: the backoff keeps growing.
        if changes.entities:
            self.made_progress = True

    async def readmit(self, arrivals: Sequence[Arrival | QueryReached]) -> list[EventEnvelope[E]]:
        """Admit `arrivals` again, one at a time, after a reload; a `QueryReached` among them
        moves the tracker again, in its place."""
        plan: list[EventEnvelope[E]] = []
        for arrival in arrivals:
            if isinstance(arrival, QueryReached):
                self.tracker.reach(arrival.timestamp)
            else:
                plan.extend(await self.admit([arrival[0]], arrival[1]))
        return plan

    async def admit(
        self, records: Sequence[EventRecord], source: EnvelopeSource
    ) -> list[EventEnvelope[E]]:
        """The envelopes among `records` to hand to the handler, in order, with any missing
        events replayed before them; the tracker counts them as handled. What to do with each
        record is `fluvial.core.envelope_admission.admit`'s decision; this does its I/O."""
        tracker, accepted = self.tracker, []
        # The source's rule may change while it runs (a gRPC consumer's filter becoming
        # non-empty), and a batch may be the first to follow that change.
        tracker.first_sight = self.source.first_sight
        for record in records:
            admission = admit(tracker, record, source)
            if admission is HANDLE:
                accepted.extend(self._decode(record, source))
            elif admission is not DROP:
                accepted.extend(await self._admit_with_io(record, source, admission))
        return accepted

    async def _admit_with_io(
        self, record: EventRecord, source: EnvelopeSource, admission: Admission
    ) -> list[EventEnvelope[E]]:
        """Do the I/O `admission` asks for: look the entity up (and admit again), read the
        timestamp of the event before (and admit again), replay a gap, load the payload; the
        envelopes to hand to the handler."""
        previous: PreviousEvent | None = None
        if isinstance(admission, LookUp):
            stored = await self.store.load_entity(self.name, record.persistence_id)
            self.tracker.learn(record.persistence_id, stored)
            admission = admit(self.tracker, record, source)
        if isinstance(admission, LookUpTimestamp):
            timestamp = await self.source.event_timestamp(
                admission.persistence_id, admission.seq_nr
            )
            previous = PreviousEvent(timestamp)
            admission = admit(self.tracker, record, source, previous=previous)
        if isinstance(admission, Load):
            loaded = await self.source.load_event(admission.persistence_id, admission.seq_nr)
            if loaded is not None:
                record = loaded
            else:  # as the backtracking query found it: a placeholder
                log.warning(
                    "projection %r: %s seq nr %d is gone from the source; counted as a placeholder",
                    self.name,
                    admission.persistence_id,
                    admission.seq_nr,
                )
            admission = admit(self.tracker, record, source, loaded=True, previous=previous)
        if isinstance(admission, Replay):
            return await self._replay(record, admission)
        return self._decode(record, source) if admission is HANDLE else []

    async def _replay(self, record: EventRecord, gap: Replay) -> list[EventEnvelope[E]]:
        """Fill the gap before `record` from the source, `record` included."""
        first, last = gap.from_seq_nr, gap.to_seq_nr
        missing = await self.source.replay(record.persistence_id, first, last)
        replayed: list[EventEnvelope[E]] = []
        for event in admit_replayed(self.tracker, missing):
            replayed.extend(self._decode(event, REPLAY))
        if not missing or missing[-1].seq_nr != record.seq_nr:
            log.warning(
                "projection %r: could not replay %s seq nrs %d..%d; the next event of that entity "
                "asks for the replay again",
                self.name,
                record.persistence_id,
                first,
                last,
            )
        return replayed

    def _decode(self, record: EventRecord, source: EnvelopeSource) -> list[EventEnvelope[E]]:
        """The envelope of `record`, or none if it cannot be decoded and the recovery
        strategy skips (else the instance fails: nothing is skipped silently)."""
        assert record.payload is not None, "admit hands over no placeholder"
        try:
            event = self.serializers.decode(
                record.payload, persistence_id=record.persistence_id, seq_nr=record.seq_nr
            )
        except DataError as exc:
            if not self.projection.recovery.skip:
                raise HandlerFailed(record.persistence_id, record.seq_nr) from exc
            log.warning("projection %r: skipping undecodable event: %s", self.name, exc)
            return []
        return [EventEnvelope.of(record, event, source)]


async def receive_until(
    receive: trio.MemoryReceiveChannel[SourceMessage], deadline: float
) -> SourceMessage | None:
    """The next batch (or `QueryReached`), or None at `deadline`."""
    with trio.move_on_at(deadline):
        return await receive.receive()
    return None


def log_retry(name: str, attempt: int, error: Exception) -> None:
    """Log that the handler failed on attempt `attempt` (0-based) and is tried again."""
    log.warning(
        "projection %r: handler failed (attempt %d), retrying: %s", name, attempt + 1, error
    )


def log_skipped(name: str, envelopes: Sequence[EventEnvelope[Any]], error: Exception) -> None:
    """Log the envelopes that the recovery strategy skips, naming them."""
    log.warning(
        "projection %r: skipping %d envelope(s) after the handler kept failing (%s): %s",
        name,
        len(envelopes),
        error,
        ", ".join(f"{e.persistence_id}#{e.seq_nr}" for e in envelopes[:20]),
    )
