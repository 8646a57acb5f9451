"""Which of a stream's replays run: at most a bound at once, the rest queued in order.

A consumer asks for a replay of one entity when it sees a gap or when a filter change makes
the entity visible. Replays read the journal by persistence id, which costs the producer a
query each, so a stream runs at most `max_running` at once (the reference system's 3) and
queues the rest in arrival order. A new request for an entity that has one already replaces
it: a queued one in its place in the queue, a running one by cancelling it and starting the
new one in its slot; the replaced request is answered as superseded. So an entity is never
replayed twice at once, and a burst of requests never runs more than the bound.

The queue is bounded too, since a client (not only fluvial's consumer, whose look-ahead
keeps 8 outstanding) may ask for any number of distinct entities: a consumer's request that
would wait while `max_queued` replays wait already is refused (`ReplaysChanged.refused`),
that request alone; the shell tells the consumer, which asks another way. A replacement
takes no new place (it is admitted whatever the queue holds), nor does a request that starts
at once. The replays the producer starts itself (`own`: a filter update included entities)
take places like any other, so that a queue long with them sends a consumer's request
elsewhere at once rather than behind them, but are never refused: no one asked for them, so
no one would ask again. There are at most as many as the entities the stream's filter
updates included by id (one replay per entity at a time).

Pure bookkeeping: the stream core (`fluvial.core.replication_stream`) checks the requests'
content and owns this; the shell runs what `ReplaysChanged.start` says and reports each one
finished.
"""

from __future__ import annotations

from collections.abc import Iterator

from fluvial.core.errors import UsageError
from fluvial.core.replication_stream_errors import LocalStreamError
from fluvial.core.replication_stream_messages import Replay, ReplaysChanged

# The reference system's default: replays run in parallel up to 3 per stream.
MAX_RUNNING_REPLAYS = 3
# What may wait behind them: fluvial's consumer keeps at most 8 outstanding per stream (5
# waiting), so its requests fit several times over, with room for the stream's own replays.
MAX_QUEUED_REPLAYS = 32


class ReplayQueue:
    """The running and queued replays of one stream (see the module docstring)."""

    def __init__(
        self, max_running: int = MAX_RUNNING_REPLAYS, max_queued: int = MAX_QUEUED_REPLAYS
    ) -> None:
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise UsageError(f"at least one replay must be able to run: {max_running!r}")
        if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 0:
            raise UsageError(f"the replays that may wait must be an int >= 0: {max_queued!r}")
        self.max_running = max_running
        self.max_queued = max_queued
        # By persistence id; a dict keeps insertion order, and replacing a queued request
        # under the same key keeps its place in the queue.
        self._running: dict[str, Replay] = {}
        self._queued: dict[str, Replay] = {}

    @property
    def running(self) -> tuple[Replay, ...]:
        """The replays that run now, in the order they started."""
        return tuple(self._running.values())

    @property
    def queued(self) -> tuple[Replay, ...]:
        """The replays that wait for a slot, in the order they will start."""
        return tuple(self._queued.values())

    def uses(self, correlation_id: int) -> bool:
        """Whether a running or queued replay answers `correlation_id`."""
        return any(r.correlation_id == correlation_id for r in self._all())

    def request(self, replay: Replay, *, own: bool = False) -> ReplaysChanged:
        """Admit `replay`: start it, queue it, or let it replace its entity's earlier one;
        refuse it when it would wait and `max_queued` wait already, unless it is the stream's
        `own` (see the module docstring).

        Its correlation id must not be in use (`uses`): LocalStreamError otherwise."""
        if self.uses(replay.correlation_id):
            raise LocalStreamError(
                f"correlation id {replay.correlation_id} is in use: check `uses` first"
            )
        pid = replay.persistence_id
        if (old := self._queued.get(pid)) is not None:
            self._queued[pid] = replay
            return ReplaysChanged(superseded=(old,))
        if (old := self._running.pop(pid, None)) is not None:
            self._running[pid] = replay
            return ReplaysChanged(start=(replay,), cancel=(old,), superseded=(old,))
        if len(self._running) < self.max_running:
            self._running[pid] = replay
            return ReplaysChanged(start=(replay,))
        if not own and len(self._queued) >= self.max_queued:
            return ReplaysChanged(refused=(replay,))
        self._queued[pid] = replay
        return ReplaysChanged()

    def finished(self, correlation_id: int) -> ReplaysChanged:
        """Free the slot of the running replay `correlation_id` and start the next queued one.

        LocalStreamError if no running replay has that id (the shell reports only what it
        started and did not cancel)."""
        for pid, replay in self._running.items():
            if replay.correlation_id == correlation_id:
                del self._running[pid]
                return ReplaysChanged(start=self._fill_slots())
        raise LocalStreamError(
            f"no running replay has correlation id {correlation_id}: report only the replays "
            "that ReplaysChanged.start named and ReplaysChanged.cancel did not"
        )

    def _fill_slots(self) -> tuple[Replay, ...]:
        started = []
        while self._queued and len(self._running) < self.max_running:
            pid = next(iter(self._queued))
            replay = self._queued.pop(pid)
            self._running[pid] = replay
            started.append(replay)
        return tuple(started)

    def _all(self) -> Iterator[Replay]:
        yield from self._running.values()
        yield from self._queued.values()
