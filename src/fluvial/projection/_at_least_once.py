"""At-least-once consumption: the handler's effects at once, the offsets saved in batches.

The tracker counts an envelope as handled when it is admitted, before the handler has run, so a
save happens only when everything admitted has been handled; a clean stop (cancellation) that
interrupts the handler first undoes the admission of the record in hand (`Savepoint`), so what
it saves never covers an envelope still in the handler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import trio

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.offset_tracker import OffsetChanges, Savepoint
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.projection._handlers import AtLeastOnce, GroupedAtLeastOnce
from fluvial.projection._instance import (
    HandlerFailed,
    Instance,
    log_retry,
    log_skipped,
    receive_until,
)
from fluvial.projection.api import QueryReached, SourceMessage

log = logging.getLogger("fluvial.projection")

E = TypeVar("E")

# How long a clean stop may wait for the save of the offsets of what was handled.
SAVE_ON_STOP_TIMEOUT = 5.0


class _Saver:
    """Saves an instance's offsets, now and on a clean stop."""

    def __init__(self, instance: Instance[Any, Any], *, grouped: bool) -> None:
        self.instance = instance
        # Grouped, everything admitted since the last save waits in a plan: unhandled.
        self.grouped = grouped
        self.in_hand: Savepoint | None = None  # a record admitted, not all of it handled
        self.unsaved: OffsetChanges | None = None  # taken by a save that did not finish

    async def save(self) -> None:
        """Save the offsets of everything admitted so far (all of it handled)."""
        changes = self.instance.take_changes()
        self.unsaved = changes
        await self.instance.store.save(self.instance.name, self.instance.slices, changes)
        self.unsaved = None
        self.instance.committed(changes)

    async def save_on_stop(self) -> None:
        """Save what was handled, shielded from the cancellation that stops the instance;
        a failure is logged (those envelopes come again after a restart). SAVE_ON_STOP_TIMEOUT
        bounds the wait for the write to be taken; once taken, a write runs to its end (the
        journal's busy timeout bounds that)."""
        tracker = self.instance.tracker
        if self.grouped:
            changes = OffsetChanges((), {})
        else:
            if self.in_hand is not None:
                tracker.roll_back_to(self.in_hand)
            changes = tracker.take_changes()
        if self.unsaved is not None:
            changes = self.unsaved.then(changes)
        if changes.empty:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + SAVE_ON_STOP_TIMEOUT
            try:
                await self.instance.store.save(self.instance.name, self.instance.slices, changes)
            except Exception as exc:
                log.warning(
                    "projection %r (slices %s): saving its offsets on stop failed: %s",
                    self.instance.name,
                    self.instance.slices,
                    exc,
                )
        if scope.cancelled_caught:
            log.warning(
                "projection %r (slices %s): saving its offsets on stop took over %.0fs; gave up",
                self.instance.name,
                self.instance.slices,
                SAVE_ON_STOP_TIMEOUT,
            )


async def consume_at_least_once(
    instance: Instance[E, Any],
    receive: trio.MemoryReceiveChannel[SourceMessage],
    handler: AtLeastOnce[E],
) -> None:
    """Hand what `receive` brings to `handler`, an envelope at a time, until cancelled."""
    await _consume(receive, _OneAtATime(instance, handler))


async def consume_grouped_at_least_once(
    instance: Instance[E, Any],
    receive: trio.MemoryReceiveChannel[SourceMessage],
    handler: GroupedAtLeastOnce[E],
) -> None:
    """Hand what `receive` brings to `handler` in groups, until cancelled."""
    await _consume(receive, _InGroups(instance, handler))


class _Batching(Protocol):
    """How a kind of at-least-once handler takes records, between two saves."""

    saver: _Saver
    wait: float  # seconds after the first record since the last save, at most, to the next

    async def add(self, record: EventRecord, source: EnvelopeSource) -> bool:
        """Take `record`; True if enough are waiting for a flush."""

    async def flush(self) -> None:
        """Hand over what waits, and save the offsets."""


async def _consume(receive: trio.MemoryReceiveChannel[SourceMessage], batching: _Batching) -> None:
    instance, due = batching.saver.instance, math.inf
    try:
        while True:
            # Idle (all saved), it wakes when the quiet slices' offsets are due to move.
            idle = due == math.inf
            batch = await receive_until(receive, instance.quiet_slices_due() if idle else due)
            if isinstance(batch, QueryReached):
                instance.tracker.reach(batch.timestamp)
            elif batch is not None:
                records, source = batch
                for record in records:
                    if due == math.inf:
                        due = trio.current_time() + batching.wait
                    if await batching.add(record, source) or trio.current_time() >= due:
                        await batching.flush()
                        due = math.inf
            if trio.current_time() >= due:
                await batching.flush()
                due = math.inf
            elif due == math.inf and instance.move_quiet_slices_if_due():
                await batching.saver.save()  # idle: the quiet slices' offsets alone
    except* trio.Cancelled:
        # A group too: a handler that opens a nursery of its own gets the Cancelled of the
        # stop wrapped in an ExceptionGroup.
        await batching.saver.save_on_stop()
        raise


class _OneAtATime(Generic[E]):
    """An envelope at a time; a save every `save_every` envelopes or `save_after` seconds."""

    def __init__(self, instance: Instance[E, Any], handler: AtLeastOnce[E]) -> None:
        self.instance = instance
        self.handler = handler
        self.saver = _Saver(instance, grouped=False)
        self.wait = handler.save_after
        self.unsaved = 0

    async def add(self, record: EventRecord, source: EnvelopeSource) -> bool:
        # Admitted one record at a time, so that a save within a source batch covers only
        # the envelopes handled so far.
        instance, saver = self.instance, self.saver
        saver.in_hand = instance.tracker.savepoint(record)
        for envelope in await instance.admit([record], source):
            await _call_with_recovery(instance, self.handler.handle, envelope, [envelope])
            self.unsaved += 1
        saver.in_hand = None
        return self.unsaved >= self.handler.save_every

    async def flush(self) -> None:
        await self.saver.save()
        self.unsaved = 0


class _InGroups(Generic[E]):
    """Groups of at most `max_size` envelopes, collected for at most `max_wait` seconds; a
    save after each plan of groups. On a stop, only what a finished plan saved is handled:
    the groups of an unfinished plan come again."""

    def __init__(self, instance: Instance[E, Any], handler: GroupedAtLeastOnce[E]) -> None:
        self.instance = instance
        self.handler = handler
        self.saver = _Saver(instance, grouped=True)
        self.wait = handler.max_wait
        self.plan: list[EventEnvelope[E]] = []

    async def add(self, record: EventRecord, source: EnvelopeSource) -> bool:
        self.plan.extend(await self.instance.admit([record], source))
        return len(self.plan) >= self.handler.max_size

    async def flush(self) -> None:
        # A replay can make the plan longer than max_size: several groups.
        plan, size = self.plan, self.handler.max_size
        for start in range(0, len(plan), size):
            group = plan[start : start + size]
            await _call_with_recovery(self.instance, self.handler.handle, group, group)
        await self.saver.save()
        self.plan = []


async def _call_with_recovery(
    instance: Instance[E, Any],
    function: Callable[[Any], Awaitable[None]],
    argument: object,
    envelopes: Sequence[EventEnvelope[E]],
) -> None:
    recovery, backoff = instance.projection.recovery, instance.projection.backoff
    for attempt in range(recovery.retries + 1):
        try:
            await function(argument)
            return
        except Exception as exc:
            error = exc
        if attempt < recovery.retries:
            log_retry(instance.name, attempt, error)
            await trio.sleep(backoff.delay(attempt))
    if not recovery.skip:
        raise HandlerFailed(envelopes[0].persistence_id, envelopes[0].seq_nr) from error
    log_skipped(instance.name, envelopes, error)
