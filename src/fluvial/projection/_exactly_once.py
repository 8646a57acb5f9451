"""Exactly-once consumption: the handler's writes and the offsets in one transaction.

The transaction is the offset store's (`OffsetStore.commit`), of its type `T`. Ungrouped,
a transaction holds a source batch and the batches already waiting behind it (group commit:
taken without waiting, while it holds fewer than `GROUP_COMMIT_RECORDS` records), so a lone
batch commits at once and a burst after a stall in a few commits instead of one per batch;
grouped, a group of up to `max_size` envelopes or `max_wait` seconds after the first. The
offset store compares the stored offsets with the ones this instance read before it runs the
handler, so a second instance cannot apply an event twice (it gets ProjectionConflict
instead). A failing transaction is retried, skipped or fails the instance as the recovery
strategy says; the handler runs once per attempt. A group commit that fails commits each of
its batches alone instead, so that the strategy sees each batch as without group commit: the
group's failure counts as the first attempt of the batch that failed in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Generic, TypeVar

import trio

from fluvial.core.records import EventEnvelope
from fluvial.projection._handlers import ExactlyOnce, GroupedExactlyOnce
from fluvial.projection._instance import (
    Arrival,
    HandlerFailed,
    Instance,
    log_retry,
    log_skipped,
    receive_until,
)
from fluvial.projection.api import Batch, QueryReached, SourceMessage

E = TypeVar("E")
T = TypeVar("T")

# Ungrouped, a transaction takes more waiting batches only while it holds fewer records than
# this: about 25 ms of the consumer's work at ~250 us per record, so a transaction stays short
# and the batches it waited for are not held back long. A source batch is never split.
GROUP_COMMIT_RECORDS = 100


async def consume_exactly_once(
    instance: Instance[E, T],
    receive: trio.MemoryReceiveChannel[SourceMessage],
    handler: ExactlyOnce[E, T] | GroupedExactlyOnce[E, T],
) -> None:
    """Hand what `receive` brings to `handler`, a transaction at a time, until cancelled."""
    max_size, max_wait = (
        (handler.max_size, handler.max_wait)
        if isinstance(handler, GroupedExactlyOnce)
        else (0, 0.0)
    )
    held = _InHand[E]()
    due = math.inf
    while True:
        # Idle, it wakes when the quiet slices' offsets are due to move.
        batch = await receive_until(receive, due if held.records else instance.quiet_slices_due())
        if isinstance(batch, QueryReached):
            held.reached(instance, batch)
            continue
        if batch is not None:
            await held.take(instance, batch)
            if max_size == 0:
                await _take_waiting(instance, handler, receive, held)
            elif held.plan and len(held.plan) < max_size:
                due = min(due, trio.current_time() + max_wait)
                continue
        if held.records:
            batches = held.batches if max_size == 0 else ()
            await _commit(instance, handler, held.arrivals(), held.plan, batches)
        elif batch is None and instance.move_quiet_slices_if_due():
            # Idle: the quiet slices' offsets in a transaction of their own.
            await _commit(instance, handler, [], [])
        held, due = _InHand[E](), math.inf


class _InHand(Generic[E]):
    """What the transaction in hand holds: the source batches taken (each as arrivals) and
    the `QueryReached` between them, how many records, and the envelopes admitted."""

    def __init__(self) -> None:
        self.batches: list[list[Arrival] | QueryReached] = []
        self.records = 0
        self.plan: list[EventEnvelope[E]] = []

    def arrivals(self) -> list[Arrival | QueryReached]:
        """The batches' arrivals and the `QueryReached` between them, in order."""
        return [a for b in self.batches for a in ((b,) if isinstance(b, QueryReached) else b)]

    async def take(self, instance: Instance[E, T], batch: Batch) -> None:
        """Admit `batch` into the transaction. It is kept before it is admitted: a failed
        admission leaves it last, for `_take_waiting` to leave out."""
        records, source = batch
        self.batches.append([(r, source) for r in records])
        self.records += len(records)
        self.plan.extend(await instance.admit(records, source))

    def reached(self, instance: Instance[E, T], reached: QueryReached) -> None:
        """Move the tracker to where the query came. Kept among the batches, in its place,
        if records are in hand: a failed attempt reloads the tracker and admits them again
        in order (a backtracking record moves its slice only once the query has passed
        it)."""
        instance.tracker.reach(reached.timestamp)
        if self.records:
            self.batches.append(reached)


async def _take_waiting(
    instance: Instance[E, T],
    handler: ExactlyOnce[E, T] | GroupedExactlyOnce[E, T],
    receive: trio.MemoryReceiveChannel[SourceMessage],
    held: _InHand[E],
) -> None:
    """Add to the transaction in hand the batches already waiting in `receive`, in order,
    without waiting, while it holds fewer than GROUP_COMMIT_RECORDS records.

    If admitting one fails (an undecodable event under `fail()`, the source's I/O), the
    batches taken before it commit first, each alone, as they did before it was admitted
    without group commit; then the error comes out as itself."""
    while held.records < GROUP_COMMIT_RECORDS:
        try:
            message = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return  # an end of the channel comes out of the next receive, after the commit
        if isinstance(message, QueryReached):
            held.reached(instance, message)
            continue
        try:
            await held.take(instance, message)
        except Exception:
            await instance.reload()  # the failed admission moved the tracker halfway
            await _commit_each(instance, handler, held.batches[:-1])
            raise


class _Writes(Generic[E, T]):
    """The handler's writes of one transaction; remembers the handler's error and the
    envelope it failed on (the first of a group), which name the failure."""

    def __init__(
        self,
        handler: ExactlyOnce[E, T] | GroupedExactlyOnce[E, T],
        envelopes: list[EventEnvelope[E]],
    ) -> None:
        self.handler = handler
        self.envelopes = envelopes
        self.current: EventEnvelope[E] | None = None
        self.error: Exception | None = None

    def __call__(self, txn: T) -> None:
        handler, envelopes = self.handler, self.envelopes
        if isinstance(handler, GroupedExactlyOnce):
            # A source batch can hold more than max_size: several groups, one transaction.
            for start in range(0, len(envelopes), handler.max_size):
                group = envelopes[start : start + handler.max_size]
                try:
                    handler.handle(txn, group)
                except Exception as exc:
                    self.current, self.error = group[0], exc
                    raise
            return
        handle = handler.handle
        envelope = None
        try:
            for envelope in envelopes:  # after a failure, the envelope it failed on
                handle(txn, envelope)
        except Exception as exc:
            self.current, self.error = envelope, exc
            raise


# The handler's error and the envelope it failed on.
_Failure = tuple[Exception, EventEnvelope[E]]


async def _commit(
    instance: Instance[E, T],
    handler: ExactlyOnce[E, T] | GroupedExactlyOnce[E, T],
    arrivals: list[Arrival | QueryReached],
    plan: list[EventEnvelope[E]],
    batches: Sequence[list[Arrival] | QueryReached] = (),
    failed: _Failure[E] | None = None,
) -> None:
    """Commit `plan` (admitted from `arrivals`) with its offsets, as the recovery strategy
    says when the handler fails. `batches`: the source batches of a group commit. `failed`:
    the first attempt at `arrivals` was made, in a group commit that failed on them."""
    recovery, backoff = instance.projection.recovery, instance.projection.backoff
    attempt = 0
    while True:
        if failed is not None:
            (error, failed_on), failed = failed, None
        else:
            changes = instance.take_changes()
            writes = _Writes(handler, list(plan))
            try:
                await instance.store.commit(instance.name, instance.slices, changes, writes)
                instance.committed(changes)
                return
            except Exception as exc:
                if exc is not writes.error or writes.current is None:
                    raise  # not the handler's: a conflict or a storage error
                error, failed_on = exc, writes.current
            # Nothing of it was committed: start again from what the store says.
            await instance.reload()
            if sum(not isinstance(b, QueryReached) for b in batches) > 1:
                # A group commit failed: each source batch in a transaction of its own, as
                # without it, so the batches before the failing one commit; the failing
                # batch has had its first attempt, the one its handler would have seen
                # alone (it saw the batches before it, uncommitted, in the same state).
                await _commit_each(instance, handler, batches, (error, failed_on))
                return
            plan = await instance.readmit(arrivals)
        if attempt < recovery.retries:
            log_retry(instance.name, attempt, error)
            await trio.sleep(backoff.delay(attempt))
            attempt += 1
            continue
        if not recovery.skip:
            raise HandlerFailed(failed_on.persistence_id, failed_on.seq_nr) from error
        records = [a for a in arrivals if not isinstance(a, QueryReached)]
        if len(records) > 1 and not isinstance(handler, GroupedExactlyOnce):
            # Find the envelopes that fail on their own; skip only those.
            await instance.reload()
            parts = [a if isinstance(a, QueryReached) else [a] for a in arrivals]
            await _commit_each(instance, handler, parts)
            return
        log_skipped(instance.name, plan, error)
        plan = []


async def _commit_each(
    instance: Instance[E, T],
    handler: ExactlyOnce[E, T] | GroupedExactlyOnce[E, T],
    parts: Sequence[Sequence[Arrival] | QueryReached],
    failed: _Failure[E] | None = None,
) -> None:
    """After a reload: commit each of `parts` in a transaction of its own, in order, as the
    recovery strategy says; a `QueryReached` among them moves the tracker in its place.
    `failed`: the attempt of them all together failed there: the first attempt of the part
    whose plan holds the envelope it failed on (a replayed one too; a duplicate of it in a
    later part is dropped by then, handled or skipped)."""
    for part in parts:
        if isinstance(part, QueryReached):
            instance.tracker.reach(part.timestamp)
            continue
        plan = await instance.readmit(part)
        first_failed = None
        if failed is not None and any(_same_event(e, failed[1]) for e in plan):
            first_failed, failed = failed, None
        await _commit(instance, handler, list(part), plan, failed=first_failed)


def _same_event(a: EventEnvelope[E], b: EventEnvelope[E]) -> bool:
    return a.persistence_id == b.persistence_id and a.seq_nr == b.seq_nr
