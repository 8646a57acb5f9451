"""`serve_shared_projection`: this process as one of several nodes sharing a projection.

The projection's slices are split into ranges; each range is run by one instance (the
runner's `serve_owned`), on whichever node holds its lease in the offset store. A node runs
rounds, every `probe_interval` with jitter:

1. It counts the live nodes. Each node holds a **presence lease** of one slot: a lease of slice
   `k` of the pseudo-projection `<name>@nodes`, for `k` below the number of ranges, renewed
   every third of `lease_duration` like a range's lease. A round tries to take every other
   slot: a held one names a live node (`ProjectionLeaseHeld.holder`), a free one is released
   again (or kept as its own slot if it has none). So the nodes are the holders of live
   presence leases: a node that joins is seen at the others' next round, one that stops
   (releasing its slot) or dies (its slot expiring) is gone from it.
2. From the sorted names it computes its share (`fluvial.core.range_shares.share_of`: the
   shares add up to the ranges and differ by at most one).
3. Above its share it stops instances (each gives its lease up); below it, it tries the
   ranges it does not run, in a random order, until it has its share: a free range, or one
   whose lease expired, starts an instance; a held one tells when its lease expires if not
   renewed, and the next round comes then (with jitter) if that is sooner.

An instance whose lease is lost (it stalled past `lease_duration` and another node took the
range over), or whose offsets changed under it, stops: the node counts the range as not its
own and tries it again at a later round; so does a store error after the first round. Every
other failure (`ProjectionFailed`, a read model's migration, a usage error) ends the node,
raised as itself. Leases stay the only arbiter: two nodes with different views of who is
alive can both try a range, and one gets it.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Sequence
from typing import Any, TypeVar, overload

import trio

from fluvial.core.errors import DataError, UsageError
from fluvial.core.ids import SliceRange, slice_ranges
from fluvial.core.leases import Lease
from fluvial.core.projection_errors import (
    ProjectionConflict,
    ProjectionFailed,
    ProjectionLeaseHeld,
)
from fluvial.core.range_shares import share_of
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.api import Journal
from fluvial.projection._runner import (
    Projection,
    new_owner,
    own_offset_store,
    serve_owned,
)
from fluvial.projection._supervision import Status, Supervisor, open_supervisor
from fluvial.projection.api import JournalWithOffsetStore, OffsetStore, SourceProvider

__all__ = ["presence_name", "serve_shared_projection"]

log = logging.getLogger("fluvial.projection")

E = TypeVar("E")
T = TypeVar("T")

# How long a stopping node may spend giving its presence lease up.
_RELEASE_TIMEOUT = 5.0


def presence_name(projection: str) -> str:
    """The pseudo-projection whose leases say which nodes share `projection`."""
    return f"{projection}@nodes"


@overload
async def serve_shared_projection(
    source: JournalWithOffsetStore[T],
    serializers: SerializerRegistry,
    projection: Projection[E, T],
    ranges: int | Sequence[SliceRange] = 8,
    *,
    offsets: None = None,
    probe_interval: float | None = None,
    task_status: trio.TaskStatus[None] = ...,
) -> None: ...


@overload
async def serve_shared_projection(
    source: Journal | SourceProvider,
    serializers: SerializerRegistry,
    projection: Projection[E, T],
    ranges: int | Sequence[SliceRange] = 8,
    *,
    offsets: OffsetStore[T],
    probe_interval: float | None = None,
    task_status: trio.TaskStatus[None] = ...,
) -> None: ...


@trio.lowlevel.enable_ki_protection  # fluvial's task: Ctrl-C lands in the user's code
async def serve_shared_projection(
    source: Journal | SourceProvider,
    serializers: SerializerRegistry,
    projection: Projection[E, Any],
    ranges: int | Sequence[SliceRange] = 8,
    *,
    offsets: OffsetStore[Any] | None = None,
    probe_interval: float | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run this process's share of `projection`'s slice ranges, as one of the nodes (processes)
    that run this same call on one offset store, until cancelled.

    `ranges` is how the slices are split: a number of equal ranges (a divisor of 1024), or the
    ranges themselves (disjoint); at most that many nodes get work, the others stand by. Every
    node must split them the same way. `source` and `offsets` are `serve_projection`'s; each
    range runs as one `serve_projection` instance, with its lease, renewals and restarts.

    A node takes the ranges whose lease is free or expired, up to its share (the ranges
    divided among the live nodes, known from their presence leases in the store), gives ranges
    up when more nodes are alive than when it took them, and keeps probing every
    `probe_interval` seconds (default: a third of `projection.lease_duration`), with jitter,
    and when a held range's lease would expire: a node killed with SIGKILL loses its ranges
    after `lease_duration`, and the others take them over within a probe. On a clean stop (a
    cancel) it gives its leases up, so the others take its ranges at their next probe.

    Start it with `await nursery.start(...)`: it returns after its first round, with the
    instances of the ranges it took started (none if others hold them all). Raises what a
    range's instance raises at start or while running (`ProjectionFailed`,
    `ReadModelMigrationFailed`, `UsageError`), except a lost lease or a conflict, after which
    the node only gives that range up, and a store error after its first round (logged, the
    range tried again later); UsageError for ranges that overlap.
    """
    shared = _ranges(ranges)
    store = offsets if offsets is not None else own_offset_store(source)
    interval = projection.lease_duration / 3 if probe_interval is None else probe_interval
    if interval <= 0:
        raise UsageError(f"serve_shared_projection: probe_interval must be > 0: {interval}")
    node = _Node(source, serializers, projection, shared, store, interval)
    try:
        async with open_supervisor() as supervisor:
            supervisor.start_soon(node.keep_presence)
            await supervisor.run(node.probe_forever, supervisor, task_status)
    finally:
        await node.leave()


def _ranges(ranges: int | Sequence[SliceRange]) -> list[SliceRange]:
    if isinstance(ranges, int):
        return slice_ranges(ranges)
    shared = sorted(ranges, key=lambda r: r.min)
    if not shared:
        raise UsageError("serve_shared_projection: no slice ranges given")
    for before, after in itertools.pairwise(shared):
        if after.min <= before.max:
            raise UsageError(f"serve_shared_projection: slice ranges {before} and {after} overlap")
    return shared


class _Node:
    """One node's view: the ranges it runs, its presence lease, and its rounds."""

    def __init__(
        self,
        source: Journal | SourceProvider,
        serializers: SerializerRegistry,
        projection: Projection[Any, Any],
        ranges: list[SliceRange],
        store: OffsetStore[Any],
        interval: float,
    ) -> None:
        self.source = source
        self.serializers = serializers
        self.projection = projection
        self.ranges = ranges
        self.store = store
        self.interval = interval
        self.name = new_owner()  # the owner of every lease this node takes
        self.presence: Lease | None = None
        self.running: dict[SliceRange, trio.CancelScope] = {}
        self._random = random.Random()

    @property
    def _duration(self) -> float:
        return self.projection.lease_duration

    async def probe_forever(
        self, supervisor: Supervisor, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run rounds until cancelled; started after the first."""
        started = False
        while True:
            soonest = await self.round(supervisor, first=not started)
            if not started:
                started = True
                task_status.started()
            delay = self.interval * self._random.uniform(0.5, 1.0)
            if soonest is not None:
                # A held range's lease runs out then, unless its holder renews it.
                jitter = self._random.uniform(0.0, 0.1) * self.interval
                delay = min(delay, max(soonest, 0.0) + jitter)
            await trio.sleep(delay)

    async def round(self, supervisor: Supervisor, *, first: bool) -> float | None:
        """Count the nodes, give up or take ranges to match this node's share; in how many
        seconds the soonest lease of a range it could not take expires (None: none seen).

        A failure raises (at the first round: out of `nursery.start`), except, after the first
        round, one that is not a usage or data error (the store's, say a lost connection): it
        is logged and the round tried again later."""
        try:
            live = await self.live_nodes()
        except Exception as exc:  # the store's: try again at the next round
            if first:
                raise
            log.warning(
                "projection %r: node %s failed to count the nodes, retrying: %s: %s",
                self.projection.name,
                self.name,
                type(exc).__name__,
                exc,
            )
            return None
        share = share_of(self.name, live, len(self.ranges))
        while len(self.running) > share:
            slices, scope = self.running.popitem()
            log.info(
                "projection %r: node %s gives slices %s up (%d live nodes)",
                self.projection.name,
                self.name,
                slices,
                len(live),
            )
            scope.cancel()  # the instance gives its lease up as it stops
        soonest: float | None = None
        candidates = [r for r in self.ranges if r not in self.running]
        self._random.shuffle(candidates)
        for slices in candidates:
            if len(self.running) >= share:
                break
            try:
                await supervisor.start(self.serve_range, slices)
            except ProjectionLeaseHeld as held:
                soonest = held.expires_in if soonest is None else min(soonest, held.expires_in)
            except (UsageError, DataError, ProjectionFailed):
                raise
            except Exception as exc:
                if first:
                    raise
                log.warning(
                    "projection %r: node %s failed to start slices %s, retrying later: %s: %s",
                    self.projection.name,
                    self.name,
                    slices,
                    type(exc).__name__,
                    exc,
                )
                break
        return soonest

    async def live_nodes(self) -> set[str]:
        """The names of the nodes holding a live presence lease, this one's included once it
        has one (it takes the first free slot when it has none)."""
        live: set[str] = set()
        name = presence_name(self.projection.name)
        for slot in range(len(self.ranges)):
            if self.presence is not None and self.presence.slices.min == slot:
                live.add(self.name)
                continue
            try:
                lease = await self.store.acquire_lease(
                    name,
                    self.projection.entity_type,
                    SliceRange(slot, slot),
                    owner=self.name,
                    duration=self._duration,
                )
            except ProjectionLeaseHeld as held:
                live.add(held.holder)
                continue
            if self.presence is None:
                self.presence = lease
                live.add(self.name)
            else:
                await self.store.release_lease(lease)
        return live

    async def keep_presence(self) -> None:
        """Renew the presence lease every third of its duration; a lost one is taken again at
        the next round (a free slot), a failed renewal tried again."""
        while True:
            await trio.sleep(self._duration / 3)
            if self.presence is None:
                continue
            try:
                self.presence = await self.store.renew_lease(self.presence, self._duration)
            except ProjectionConflict:
                self.presence = None
            except Exception as exc:
                log.warning(
                    "projection %r: node %s failed to renew its presence, retrying: %s: %s",
                    self.projection.name,
                    self.name,
                    type(exc).__name__,
                    exc,
                )

    async def serve_range(self, slices: SliceRange, *, task_status: trio.TaskStatus[None]) -> None:
        """Run the instance of `slices` until it is given up or loses its lease."""
        status = Status(task_status)
        with trio.CancelScope() as scope:
            self.running[slices] = scope
            try:
                await serve_owned(
                    self.source,
                    self.serializers,
                    self.projection,
                    slices,
                    store=self.store,
                    owner=self.name,
                    task_status=status,
                )
            except ProjectionConflict as exc:
                if not status.started_:
                    raise  # another node holds it: the round goes on
                log.warning(
                    "projection %r: node %s lost slices %s, tries them again later: %s",
                    self.projection.name,
                    self.name,
                    slices,
                    exc,
                )
            finally:
                if self.running.get(slices) is scope:
                    del self.running[slices]

    async def leave(self) -> None:
        """Give the presence lease up (the instances gave theirs up as they stopped),
        shielded and bounded; a failure is logged (the lease then expires by itself)."""
        if self.presence is None:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _RELEASE_TIMEOUT
            try:
                await self.store.release_lease(self.presence)
            except Exception as exc:
                log.warning(
                    "projection %r: node %s failed to give its presence up: %s: %s",
                    self.projection.name,
                    self.name,
                    type(exc).__name__,
                    exc,
                )
