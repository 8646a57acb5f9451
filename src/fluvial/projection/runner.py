"""`serve_projection`: one projection instance over one slice range of the local journal.

The loop reads like the protocol: receive a batch from the source → ask the offset tracker
about each envelope → hand the accepted ones to the handler → persist the tracker's changes
(with the handler's writes, for exactly-once). When the handler fails, the recovery strategy
decides between retrying, skipping and failing; a failed instance restarts from its stored
offsets after an exponential backoff.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import attrs
import trio

from fluvial.core.errors import DataError, FluvialError
from fluvial.core.ids import SliceRange
from fluvial.core.offset_tracker import (
    Accepted,
    Duplicate,
    EnvelopeSource,
    NeedsStoredSeqNr,
    OffsetChanges,
    OffsetTracker,
    RejectedBacktracking,
    RejectedSeqNr,
)
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.sqlite_journal import SqliteJournal
from fluvial.journal.sqlite_offset_store import SqliteOffsetStore, save_changes
from fluvial.journal.sqlite_transaction import WriteTransaction
from fluvial.projection.handlers import (
    AtLeastOnce,
    Backoff,
    ExactlyOnce,
    GroupedAtLeastOnce,
    GroupedExactlyOnce,
    Handler,
    RecoveryStrategy,
)
from fluvial.projection.source import Batch, LocalJournalSource, SourceSettings

log = logging.getLogger("fluvial.projection")

E = TypeVar("E")
_Arrival = tuple[EventRecord, EnvelopeSource]


class ProjectionFailed(FluvialError):
    """The projection's handler kept failing past its recovery strategy and restart limit."""


class _HandlerFailed(Exception):
    """The recovery strategy gave up on an envelope: restart the instance."""


@attrs.frozen
class Projection(Generic[E]):
    """A named consumer of one entity type's events, with its handler and failure policy.

    `window` is how many seconds of event time of per-entity seq nrs stay in memory.
    """

    name: str
    entity_type: str
    handler: Handler[E]
    recovery: RecoveryStrategy = attrs.field(factory=RecoveryStrategy.fail)
    backoff: Backoff = attrs.field(factory=Backoff)
    window: float = 300.0
    source: SourceSettings = attrs.field(factory=SourceSettings)


async def serve_projection(
    journal: SqliteJournal,
    serializers: SerializerRegistry,
    projection: Projection[E],
    slices: SliceRange | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `projection` over `slices` (default: all) until cancelled.

    Start it with `await nursery.start(serve_projection, ...)`: it returns once the instance
    has loaded its offsets and subscribed to the live path, so events appended after that
    reach it by the live path. Raises ProjectionFailed after `backoff.max_restarts`
    consecutive failed restarts.
    """
    store = SqliteOffsetStore(journal.database)
    instance = _Instance(journal, serializers, store, projection, slices or SliceRange.all())
    ready: Callable[[], None] = lambda: task_status.started()  # noqa: E731
    restarts = 0
    while True:
        try:
            await instance.run(ready)
        except _HandlerFailed as exc:
            ready = _already_started
            if instance.made_progress:
                restarts = 0
            limit = projection.backoff.max_restarts
            if limit is not None and restarts >= limit:
                raise ProjectionFailed(
                    f"projection {projection.name!r} failed {restarts + 1} times in a row"
                ) from exc.__cause__
            delay = projection.backoff.delay(restarts)
            log.warning(
                "projection %r (slices %s) failed, restarting in %.2fs: %s",
                projection.name,
                instance.slices,
                delay,
                exc.__cause__,
            )
            restarts += 1
            await trio.sleep(delay)


def _already_started() -> None:
    pass


class _Instance(Generic[E]):
    def __init__(
        self,
        journal: SqliteJournal,
        serializers: SerializerRegistry,
        store: SqliteOffsetStore,
        projection: Projection[E],
        slices: SliceRange,
    ) -> None:
        self.journal = journal
        self.serializers = serializers
        self.store = store
        self.projection = projection
        self.slices = slices
        self.tracker = OffsetTracker(slices)
        self.made_progress = False

    async def run(self, ready: Callable[[], None]) -> None:
        self.made_progress = False
        await self._reload()
        source = LocalJournalSource(
            self.journal, self.projection.entity_type, self.slices, self.projection.source
        )
        send, receive = trio.open_memory_channel[Batch](4)
        failed: _HandlerFailed | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, self.tracker.resume_offset(), send)
            ready()
            try:
                await self._consume(receive)
            except _HandlerFailed as exc:
                # Raised from here, not through the nursery, which would wrap it in an
                # ExceptionGroup that `serve_projection` does not catch.
                failed = exc
            finally:
                nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _reload(self) -> None:
        self.tracker = await self.store.load(
            self.projection.name, self.slices, window=int(self.projection.window * 1_000_000)
        )

    async def _consume(self, receive: trio.MemoryReceiveChannel[Batch]) -> None:
        handler = self.projection.handler
        match handler:
            case ExactlyOnce() | GroupedExactlyOnce():
                await self._consume_exactly_once(receive, handler)
            case AtLeastOnce():
                await self._consume_at_least_once(receive, handler)
            case GroupedAtLeastOnce():
                await self._consume_grouped_at_least_once(receive, handler)

    # -- exactly once -----------------------------------------------------------------------
    async def _consume_exactly_once(
        self,
        receive: trio.MemoryReceiveChannel[Batch],
        handler: ExactlyOnce[E] | GroupedExactlyOnce[E],
    ) -> None:
        # Ungrouped: one transaction per source batch. Grouped: until max_size envelopes or
        # max_wait seconds after the first one.
        max_size, max_wait = (
            (handler.max_size, handler.max_wait)
            if isinstance(handler, GroupedExactlyOnce)
            else (0, 0.0)
        )
        arrivals: list[_Arrival] = []
        plan: list[EventEnvelope[E]] = []
        due = math.inf
        while True:
            batch = await _receive_until(receive, due)
            if batch is not None:
                records, source = batch
                arrivals.extend((r, source) for r in records)
                plan.extend(await self._admit(records, source))
                if plan and len(plan) < max_size:
                    due = min(due, trio.current_time() + max_wait)
                    continue
            if arrivals:
                await self._commit_exactly_once(handler, arrivals, plan)
            arrivals, plan, due = [], [], math.inf

    async def _commit_exactly_once(
        self,
        handler: ExactlyOnce[E] | GroupedExactlyOnce[E],
        arrivals: list[_Arrival],
        plan: list[EventEnvelope[E]],
    ) -> None:
        name = self.projection.name
        recovery, backoff = self.projection.recovery, self.projection.backoff
        attempt = 0
        while True:
            changes = self.tracker.take_changes()
            transaction = _exactly_once_transaction(handler, list(plan), name, changes)
            try:
                await self.journal.database.write(transaction)
                self._committed(changes)
                return
            except Exception as exc:
                error = exc
            # Nothing of it was committed: start again from what the store says.
            await self._reload()
            plan = await self._readmit(arrivals)
            if attempt < recovery.retries:
                log.warning(
                    "projection %r: handler failed (attempt %d), retrying: %s",
                    name,
                    attempt + 1,
                    error,
                )
                await trio.sleep(backoff.delay(attempt))
                attempt += 1
                continue
            if not recovery.skip:
                raise _HandlerFailed() from error
            if len(arrivals) > 1 and not isinstance(handler, GroupedExactlyOnce):
                # Find the envelopes that fail on their own; skip only those.
                await self._reload()
                for arrival in arrivals:
                    single = await self._readmit([arrival])
                    await self._commit_exactly_once(handler, [arrival], single)
                return
            _log_skipped(name, plan, error)
            plan = []

    # -- at least once ----------------------------------------------------------------------
    async def _consume_at_least_once(
        self, receive: trio.MemoryReceiveChannel[Batch], handler: AtLeastOnce[E]
    ) -> None:
        # Admitted one record at a time, so that a save within a source batch covers only
        # the envelopes handled so far.
        unsaved = 0
        due = math.inf
        while True:
            batch = await _receive_until(receive, due)
            if batch is not None:
                records, source = batch
                for record in records:
                    if due == math.inf:
                        due = trio.current_time() + handler.save_after
                    for envelope in await self._admit([record], source):
                        await self._call_with_recovery(handler.handle, envelope, [envelope])
                        unsaved += 1
                    if unsaved >= handler.save_every or trio.current_time() >= due:
                        await self._save_offsets()
                        unsaved, due = 0, math.inf
            if trio.current_time() >= due:
                await self._save_offsets()
                unsaved, due = 0, math.inf

    async def _consume_grouped_at_least_once(
        self, receive: trio.MemoryReceiveChannel[Batch], handler: GroupedAtLeastOnce[E]
    ) -> None:
        plan: list[EventEnvelope[E]] = []
        due = math.inf
        while True:
            batch = await _receive_until(receive, due)
            if batch is not None:
                records, source = batch
                for record in records:
                    if due == math.inf:
                        due = trio.current_time() + handler.max_wait
                    plan.extend(await self._admit([record], source))
                    if len(plan) >= handler.max_size:
                        await self._handle_groups(handler, plan)
                        plan, due = [], math.inf
            if trio.current_time() >= due:
                await self._handle_groups(handler, plan)
                plan, due = [], math.inf

    async def _handle_groups(
        self, handler: GroupedAtLeastOnce[E], plan: list[EventEnvelope[E]]
    ) -> None:
        """Hand `plan` over in groups of at most `max_size` (a replay can make it longer),
        then save the offsets."""
        for start in range(0, len(plan), handler.max_size):
            group = plan[start : start + handler.max_size]
            await self._call_with_recovery(handler.handle, group, group)
        await self._save_offsets()

    async def _call_with_recovery(
        self,
        function: Callable[[Any], Awaitable[None]],
        argument: object,
        envelopes: Sequence[EventEnvelope[E]],
    ) -> None:
        recovery, backoff = self.projection.recovery, self.projection.backoff
        for attempt in range(recovery.retries + 1):
            try:
                await function(argument)
                return
            except Exception as exc:
                error = exc
            if attempt < recovery.retries:
                log.warning(
                    "projection %r: handler failed (attempt %d), retrying: %s",
                    self.projection.name,
                    attempt + 1,
                    error,
                )
                await trio.sleep(backoff.delay(attempt))
        if not recovery.skip:
            raise _HandlerFailed() from error
        _log_skipped(self.projection.name, envelopes, error)

    async def _save_offsets(self) -> None:
        changes = self.tracker.take_changes()
        await self.store.save(self.projection.name, changes)
        self._committed(changes)

    def _committed(self, changes: OffsetChanges) -> None:
        # Progress is an envelope handled for good. One handled again after a restart (its
        # offset was not saved) or a duplicate passed again is none: the backoff keeps growing.
        if changes.entities:
            self.made_progress = True

    # -- admission --------------------------------------------------------------------------
    async def _readmit(self, arrivals: list[_Arrival]) -> list[EventEnvelope[E]]:
        plan: list[EventEnvelope[E]] = []
        for record, source in arrivals:
            plan.extend(await self._admit([record], source))
        return plan

    async def _admit(
        self, records: Sequence[EventRecord], source: EnvelopeSource
    ) -> list[EventEnvelope[E]]:
        """The envelopes among `records` to hand to the handler, in order, with any missing
        events replayed before them; the tracker counts them as handled."""
        tracker, accepted = self.tracker, []
        for record in records:
            verdict = tracker.validate(record, source)
            if isinstance(verdict, NeedsStoredSeqNr):
                stored = await self.store.load_entity(self.projection.name, record.persistence_id)
                tracker.learn(record.persistence_id, stored)
                verdict = tracker.validate(record, source)
            match verdict:
                case Accepted():
                    accepted.extend(self._decode(record))
                    tracker.accept(record)
                case RejectedSeqNr(expected) | RejectedBacktracking(expected):
                    accepted.extend(await self._replay(record, expected))
                case Duplicate() | NeedsStoredSeqNr():
                    pass
            if source is EnvelopeSource.QUERY:
                tracker.passed(record)
        return accepted

    async def _replay(self, record: EventRecord, from_seq_nr: int) -> list[EventEnvelope[E]]:
        """Fill the gap before `record` from the journal, `record` included."""
        missing = await self.journal.read_events(
            record.persistence_id, from_seq_nr, record.seq_nr, record.seq_nr - from_seq_nr + 1
        )
        replayed: list[EventEnvelope[E]] = []
        for event in missing:
            if isinstance(self.tracker.validate(event, EnvelopeSource.REPLAY), Accepted):
                replayed.extend(self._decode(event))
                self.tracker.accept(event)
        if not missing or missing[-1].seq_nr != record.seq_nr:
            log.warning(
                "projection %r: could not replay %s seq nrs %d..%d; the query will deliver them",
                self.projection.name,
                record.persistence_id,
                from_seq_nr,
                record.seq_nr,
            )
        return replayed

    def _decode(self, record: EventRecord) -> list[EventEnvelope[E]]:
        """The envelope of `record`, or none if it cannot be decoded and the recovery
        strategy skips (else the instance fails: nothing is skipped silently)."""
        assert record.payload is not None, "the local journal holds no placeholders"
        try:
            event = self.serializers.decode(
                record.payload, persistence_id=record.persistence_id, seq_nr=record.seq_nr
            )
        except DataError as exc:
            if not self.projection.recovery.skip:
                raise _HandlerFailed() from exc
            log.warning("projection %r: skipping undecodable event: %s", self.projection.name, exc)
            return []
        return [
            EventEnvelope(
                persistence_id=record.persistence_id,
                seq_nr=record.seq_nr,
                entity_type=record.entity_type,
                slice=record.slice,
                timestamp=record.timestamp,
                event=event,
                tags=record.tags,
            )
        ]


def _exactly_once_transaction(
    handler: ExactlyOnce[E] | GroupedExactlyOnce[E],
    envelopes: list[EventEnvelope[E]],
    projection: str,
    changes: OffsetChanges,
) -> Callable[[WriteTransaction], None]:
    """The handler's writes and the offsets that record them, as one write transaction."""

    def transaction(txn: WriteTransaction) -> None:
        if isinstance(handler, GroupedExactlyOnce):
            # A source batch can hold more than max_size: several groups, one transaction.
            for start in range(0, len(envelopes), handler.max_size):
                handler.handle(txn.connection, envelopes[start : start + handler.max_size])
        else:
            for envelope in envelopes:
                handler.handle(txn.connection, envelope)
        save_changes(txn.connection, projection, changes)

    return transaction


async def _receive_until(
    receive: trio.MemoryReceiveChannel[Batch], deadline: float
) -> Batch | None:
    """The next batch, or None at `deadline`."""
    with trio.move_on_at(deadline):
        return await receive.receive()
    return None


def _log_skipped(name: str, envelopes: Sequence[EventEnvelope[Any]], error: Exception) -> None:
    log.warning(
        "projection %r: skipping %d envelope(s) after the handler kept failing (%s): %s",
        name,
        len(envelopes),
        error,
        ", ".join(f"{e.persistence_id}#{e.seq_nr}" for e in envelopes[:20]),
    )
