"""Nodes sharing one projection through `serve_shared_projection`, in one process on virtual
time: each node a call of it with a store of its own view (the same SQLite file, or the same
memory store). They split the ranges by their shares, a joining node gets its share, a node
that stops hands its ranges over at once, a stalled (frozen) node's ranges move to the others
once its leases expire, and every event is applied exactly once throughout.

The PostgreSQL case, with real processes and SIGKILL, is
tests/journal/test_postgres_shared_processes.py.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
import trio
import trio.testing

from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange, slice_for, slice_ranges
from fluvial.core.projection_errors import ProjectionFailed, ProjectionLeaseHeld
from fluvial.journal.memory import MemoryJournal, MemoryOffsetStore, MemoryTransaction
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection import serve_shared_projection
from fluvial.projection._handlers import Backoff, ExactlyOnce
from fluvial.projection._runner import Projection
from fluvial.projection.api import OffsetStore
from projection.projection_helpers import (
    NAME,
    QUIET,
    REGISTRY,
    Added,
    Appender,
    Envelope,
    apply_to_model,
    assert_model_is_the_fold,
    projection,
    trio_clock,
)

LEASE = 3.0  # seconds; nodes probe every LEASE / 3 with jitter (0.5 to 1 of that)
PROBE = LEASE / 3


class Frozen:
    """An offset store that, once `freeze()` is called, never answers again: the node using
    it stalls like a process stopped mid-flight (its leases are no longer renewed, nothing it
    handles commits), as a SIGKILLed one does, without the process."""

    def __init__(self, store: OffsetStore[Any]) -> None:
        self._store = store
        self.frozen = False

    def freeze(self) -> None:
        self.frozen = True

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.frozen:
                await trio.sleep_forever()
            result = await method(*args, **kwargs)
            if self.frozen:  # answered too late: the node never hears of it
                await trio.sleep_forever()
            return result

        return call


class Flaky:
    """An offset store whose next `failures` range lease acquisitions fail, as a lost
    connection fails them."""

    def __init__(self, store: OffsetStore[Any]) -> None:
        self._store = store
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def acquire_lease(self, projection: str, *args: Any, **kwargs: Any) -> Any:
        if projection == NAME and self.failures:
            self.failures -= 1
            raise OSError("connection lost")
        return await self._store.acquire_lease(projection, *args, **kwargs)


class Node:
    """One node: `serve_shared_projection` in a cancel scope of its own, on its own store."""

    def __init__(
        self,
        journal: Any,
        store: OffsetStore[Any],
        projection_: Projection[Added, Any],
        ranges: int = 8,
    ) -> None:
        self.journal, self.store, self.projection, self.ranges = journal, store, projection_, ranges
        self.scope = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        with self.scope:
            await serve_shared_projection(
                self.journal,
                REGISTRY,
                self.projection,
                self.ranges,
                offsets=self.store,
                task_status=task_status,
            )


async def holders(store: OffsetStore[Any], ranges: list[SliceRange]) -> list[str | None]:
    """Who holds each range's lease (None: free), asked through the store as a node would."""
    found: list[str | None] = []
    for slices in ranges:
        try:
            lease = await store.acquire_lease(
                NAME, "Counter", slices, owner="observer", duration=0.001
            )
        except ProjectionLeaseHeld as held:
            found.append(held.holder)
        else:
            await store.release_lease(lease)
            found.append(None)
    return found


def shares(found: list[str | None]) -> list[int]:
    """How many ranges each holder holds, smallest first; a free range counts under None."""
    return sorted(Counter(found).values()) if None not in found else [-1]


def spread(prefix: str, per_range: int = 2, ranges: int = 8) -> list[str]:
    """Entity ids whose events fall in every one of `ranges` ranges, `per_range` in each
    (similar ids share slices, so they are picked)."""
    size, picked = 1024 // ranges, dict[int, list[str]]()
    for n in range(100_000):
        chosen = picked.setdefault(slice_for(Appender.pid(f"{prefix}{n}")) // size, [])
        if len(chosen) < per_range:
            chosen.append(f"{prefix}{n}")
        if sum(map(len, picked.values())) == per_range * ranges:
            return [entity for entities in picked.values() for entity in entities]
    raise AssertionError("not enough entity ids")


async def append_meanwhile(appender: Appender, rounds: int, every: float) -> None:
    for n in range(rounds):
        for entity in spread("e"):
            await appender.append(entity, n)
        await trio.sleep(every)


# -- SQLite: several nodes on one file ---------------------------------------------------------


def sqlite_store(journal: SqliteJournal) -> SqliteOffsetStore:
    return SqliteOffsetStore(journal.database, clock=trio_clock())


def exactly_once() -> Projection[Added, Any]:
    return projection(ExactlyOnce(apply_to_model), source=QUIET, lease_duration=LEASE)


async def test_three_nodes_split_the_ranges_by_their_shares_and_apply_each_event_once(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    appender = Appender(journal)
    await appender.append("before", 1, 2, 3)
    observer = sqlite_store(journal)
    nodes = [Node(journal, sqlite_store(journal), exactly_once()) for _ in range(3)]
    ranges = slice_ranges(8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(append_meanwhile, appender, 8, 0.25)
        # The first node alone takes every range; each one that joins gets its share from the
        # others within a few probes.
        await nursery.start(nodes[0].run)
        assert shares(await holders(nodes[0].store, ranges)) == [8]
        await nursery.start(nodes[1].run)
        await nursery.start(nodes[2].run)
        await trio.sleep(4 * PROBE)
        assert shares(await holders(nodes[0].store, ranges)) == [2, 3, 3]
        await trio.sleep(1.5)  # the appends end
        await observer.wait_until_caught_up(NAME)
        # Stable: nothing moved while the events came.
        assert shares(await holders(nodes[0].store, ranges)) == [2, 3, 3]
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


async def test_a_node_that_stops_hands_its_ranges_over_at_the_next_probe(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    appender = Appender(journal)
    observer = sqlite_store(journal)
    a, b = (Node(journal, sqlite_store(journal), exactly_once(), ranges=4) for _ in range(2))
    ranges = slice_ranges(4)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await trio.sleep(3 * PROBE)
        assert shares(await holders(a.store, ranges)) == [2, 2]
        await appender.append("x", 1, 2)
        await observer.wait_until_caught_up(NAME)
        stopped = trio.current_time()
        b.scope.cancel()  # a clean stop: b gives its leases up
        await appender.append("x", 3)
        # Well before b's leases would have expired (LEASE), a holds every range.
        await trio.sleep(PROBE + 0.1)
        assert trio.current_time() - stopped < LEASE
        assert shares(await holders(a.store, ranges)) == [4]
        await observer.wait_until_caught_up(NAME)
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


async def test_a_stalled_nodes_ranges_move_to_the_others_once_its_leases_expire(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    appender = Appender(journal)
    stalled = Frozen(sqlite_store(journal))
    nodes = [
        Node(journal, sqlite_store(journal), exactly_once(), ranges=4),
        Node(journal, sqlite_store(journal), exactly_once(), ranges=4),
        Node(journal, cast(OffsetStore[Any], stalled), exactly_once(), ranges=4),
    ]
    ranges = slice_ranges(4)
    observer = sqlite_store(journal)
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        await trio.sleep(4 * PROBE)
        before = await holders(observer, ranges)
        assert shares(before) == [1, 1, 2]
        await appender.append("y", 1, 2, 3)
        await observer.wait_until_caught_up(NAME)
        stalled.freeze()
        frozen_at = trio.current_time()
        for entity in spread("z"):  # events in every range, the stalled node's too
            await appender.append(entity, 1, 2)
        # Its last renewal was at most LEASE / 3 ago: its ranges stay its own until then.
        await trio.sleep(LEASE - PROBE - 0.1)
        assert len(set(await holders(observer, ranges))) == 3
        # Then they expire (and its presence with them), and a probe later the others run
        # them: two live nodes, two ranges each.
        await trio.sleep(PROBE + 0.1 + PROBE + 0.2)
        assert trio.current_time() - frozen_at < LEASE + PROBE + 0.3
        assert shares(await holders(observer, ranges)) == [2, 2]
        await observer.wait_until_caught_up(NAME)
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


async def test_overlapping_ranges_are_refused(journal: SqliteJournal) -> None:
    with pytest.raises(UsageError, match="overlap"):
        await serve_shared_projection(
            journal, REGISTRY, exactly_once(), [SliceRange(0, 10), SliceRange(10, 20)]
        )


# -- memory: the same promises over another OffsetStore --------------------------------------


class MemoryModel:
    """An exactly-once read model in memory: how often each event was applied."""

    def __init__(self) -> None:
        self.applied: Counter[tuple[str, int]] = Counter()

    def handle(self, txn: MemoryTransaction, envelope: Envelope) -> None:
        key = (envelope.persistence_id, envelope.seq_nr)
        txn.on_commit(lambda: self.applied.update([key]))

    def projection(self, **kwargs: Any) -> Projection[Added, MemoryTransaction]:
        return projection(ExactlyOnce(self.handle), source=QUIET, lease_duration=LEASE, **kwargs)


async def test_on_the_memory_store_a_stalled_node_is_taken_over_and_each_event_applied_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = MemoryJournal()
    store = MemoryOffsetStore(journal, clock=trio.current_time)
    stalled = Frozen(store)
    model = MemoryModel()
    appender = Appender(cast(SqliteJournal, journal))  # it only appends
    a = Node(journal, store, model.projection(), ranges=4)
    b = Node(journal, cast(OffsetStore[Any], stalled), model.projection(), ranges=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await trio.sleep(4 * PROBE)
        assert shares(await holders(store, slice_ranges(4))) == [2, 2]
        for entity in spread("m"):
            await appender.append(entity, 1)
        await store.wait_until_caught_up(NAME)
        stalled.freeze()
        for entity in spread("m"):  # in every range, the stalled node's too
            await appender.append(entity, 2, 3)
        await trio.sleep(LEASE + 2 * PROBE)
        assert shares(await holders(store, slice_ranges(4))) == [4]
        await store.wait_until_caught_up(NAME)
        nursery.cancel_scope.cancel()
    assert model.applied == Counter(
        {(Appender.pid(entity), s): 1 for entity in spread("m") for s in (1, 2, 3)}
    )


async def test_a_range_that_fails_to_start_after_the_first_round_is_tried_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    journal = MemoryJournal()
    store = MemoryOffsetStore(journal, clock=trio.current_time)
    flaky = Flaky(store)
    model = MemoryModel()
    a = Node(journal, store, model.projection(), ranges=4)
    b = Node(journal, cast(OffsetStore[Any], flaky), model.projection(), ranges=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)  # a takes all 4
        await nursery.start(b.run)  # b gets none at its first round
        flaky.failures = 3  # its next tries fail, as the store's connection does
        await trio.sleep(6 * PROBE)
        assert shares(await holders(store, slice_ranges(4))) == [2, 2]
        assert flaky.failures == 0
        await Appender(cast(SqliteJournal, journal)).append("after", 1)
        await store.wait_until_caught_up(NAME)
        nursery.cancel_scope.cancel()
    assert model.applied == Counter({("Counter|after", 1): 1})
    assert "failed to start slices" in caplog.text


async def test_a_failing_projection_comes_out_of_the_node_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = MemoryJournal()

    def fail(txn: MemoryTransaction, envelope: Envelope) -> None:
        raise ValueError("the handler always fails")

    failing = projection(
        ExactlyOnce(fail), source=QUIET, lease_duration=LEASE, backoff=Backoff(max_restarts=1)
    )
    await Appender(cast(SqliteJournal, journal)).append("f", 1)
    serve: Callable[[], Awaitable[None]] = functools.partial(
        serve_shared_projection, journal, REGISTRY, failing, 4
    )
    with pytest.raises(ProjectionFailed) as failed:
        await serve()
    assert isinstance(failed.value.__cause__, ValueError)
