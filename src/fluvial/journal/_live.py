"""The live path: committed events handed to in-process subscribers with no database read.

A journal publishes every batch it commits; a projection subscribed to its entity type and
slices receives it at once. The query stays the reliable path: a subscriber that falls behind
loses live events (counted in `dropped`), never blocks a writer, and the query delivers them.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Sequence

import trio

from fluvial._wakeup import SingleWaiter
from fluvial.core.ids import SliceRange
from fluvial.core.records import EventRecord


class LiveSubscription:
    """Events of one entity type and slice range, as they are committed."""

    def __init__(self, entity_type: str, slices: SliceRange, capacity: int) -> None:
        self.entity_type = entity_type
        self.slices = slices
        self.capacity = capacity
        self.dropped = 0
        self._buffer: deque[EventRecord] = deque()
        self._receiver = SingleWaiter()

    def _offer(self, records: Sequence[EventRecord]) -> None:
        for record in records:
            if record.entity_type != self.entity_type or record.slice not in self.slices:
                continue
            if len(self._buffer) >= self.capacity:
                self.dropped += 1
                continue
            self._buffer.append(record)
        if self._buffer:
            self._receiver.wake()

    async def receive_batch(self) -> list[EventRecord]:
        """Every buffered event, waiting for at least one."""
        if not self._buffer:
            await self._receiver.wait()
        else:
            await trio.lowlevel.checkpoint()
        batch = list(self._buffer)
        self._buffer.clear()
        return batch


class LivePublisher:
    """Fans committed events out to the current subscriptions."""

    def __init__(self) -> None:
        self._subscriptions: list[LiveSubscription] = []

    def publish(self, records: Sequence[EventRecord]) -> None:
        """Offer committed `records` to every subscription; never blocks (a full
        subscription drops them and counts them in `dropped`)."""
        for subscription in self._subscriptions:
            subscription._offer(records)

    @contextlib.contextmanager
    def subscribe(
        self, entity_type: str, slices: SliceRange, *, capacity: int = 10_000
    ) -> Iterator[LiveSubscription]:
        """Receive the events of `entity_type` in `slices` published while the context is
        open, buffering at most `capacity` not yet received."""
        subscription = LiveSubscription(entity_type, slices, capacity)
        self._subscriptions.append(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.remove(subscription)
