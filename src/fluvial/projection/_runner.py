"""`serve_projection`: one projection instance over one slice range of a source.

The source is a journal (any backend, read by `LocalJournalSource`) or a `SourceProvider`;
the offsets live in an `OffsetStore` (by default the journal's own, `HasOffsetStore`). The
runner, its `Instance`, the lease keeper and the consumers see only those protocols
(`fluvial.projection.api`).

The loop reads like the protocol: take the lease of the slice range → receive a batch from
the source → ask the offset tracker about each envelope → hand the accepted ones to the
handler → persist the tracker's changes (with the handler's writes, for exactly-once). When
the handler fails, the recovery strategy decides between retrying, skipping and failing; a
failed instance, like one whose storage or source failed, restarts from its stored offsets
after an exponential backoff. A conflict with another instance of the projection ends it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, overload

import attrs
import trio
from typing_extensions import TypeIs
from typing_extensions import TypeVar as TypeVarWithDefault

from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange
from fluvial.core.leases import Lease
from fluvial.core.projection_errors import ProjectionConflict, ProjectionFailed
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.api import Journal
from fluvial.projection._at_least_once import consume_at_least_once, consume_grouped_at_least_once
from fluvial.projection._exactly_once import consume_exactly_once
from fluvial.projection._handlers import (
    AtLeastOnce,
    Backoff,
    ExactlyOnce,
    GroupedAtLeastOnce,
    GroupedExactlyOnce,
    Handler,
    RecoveryStrategy,
)
from fluvial.projection._instance import HandlerFailed, Instance
from fluvial.projection._source import LocalJournalSources
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection._supervision import open_supervisor
from fluvial.projection.api import (
    HasOffsetStore,
    JournalWithOffsetStore,
    OffsetStore,
    SourceMessage,
    SourceProvider,
)

__all__ = ["Projection", "ProjectionConflict", "ProjectionFailed", "serve_projection"]

log = logging.getLogger("fluvial.projection")

E = TypeVar("E")
T = TypeVar("T")
# The store's transaction type of a projection (see `_handlers`): `object` when it writes
# through none, so that it runs on any store.
T_contra = TypeVarWithDefault("T_contra", contravariant=True, default=object)

# How long a stopping instance may spend giving its lease up.
_RELEASE_TIMEOUT = 5.0


@attrs.frozen
class Projection(Generic[E, T_contra]):
    """A named consumer of one entity type's events, with its handler and failure policy.

    `E` is its event type; `T_contra` the type of the offset store's transaction its
    exactly-once handler writes through (inferred from the handler; `object`, any store, for
    an at-least-once one).

    `window` is how many seconds of event time of per-entity seq nrs stay in memory.
    `lease_duration` is how many seconds the lease of a running instance's slice range lasts
    unless renewed (every third of it): a second instance over an overlapping range is
    refused while it lasts, so a killed instance blocks a restart for at most that long.
    `quiet_slices_every` is how often, in seconds, the offsets of the range's slices without
    recent events move to where the query has come (a write per slice;
    `OffsetTracker.move_quiet_slices`): a restart reads again at most about that long's
    events, more than the busy slices' offsets say.
    """

    name: str
    entity_type: str
    handler: Handler[E, T_contra]
    recovery: RecoveryStrategy = attrs.field(factory=RecoveryStrategy.fail)
    backoff: Backoff = attrs.field(factory=Backoff)
    window: float = 300.0
    source: SourceSettings = attrs.field(factory=SourceSettings)
    lease_duration: float = attrs.field(default=10.0, validator=attrs.validators.gt(0.0))
    quiet_slices_every: float = attrs.field(default=5.0, validator=attrs.validators.gt(0.0))


@overload
async def serve_projection(
    source: JournalWithOffsetStore[T],
    serializers: SerializerRegistry,
    projection: Projection[E, T],
    slices: SliceRange | None = None,
    *,
    offsets: None = None,
    task_status: trio.TaskStatus[None] = ...,
) -> None: ...


@overload
async def serve_projection(
    source: Journal | SourceProvider,
    serializers: SerializerRegistry,
    projection: Projection[E, T],
    slices: SliceRange | None = None,
    *,
    offsets: OffsetStore[T],
    task_status: trio.TaskStatus[None] = ...,
) -> None: ...


@trio.lowlevel.enable_ki_protection  # fluvial's task: Ctrl-C lands in the user's code
async def serve_projection(
    source: Journal | SourceProvider,
    serializers: SerializerRegistry,
    projection: Projection[E, Any],
    slices: SliceRange | None = None,
    *,
    offsets: OffsetStore[Any] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `projection` over `slices` (default: all) until cancelled.

    `source` is where the events come from: a journal (any backend: SQLite, memory; read by
    its events-by-slices query, its live path and backtracking) or a `SourceProvider` (a
    gRPC consumer, a test's own source). `offsets` is the `OffsetStore` the instance keeps its
    offsets and lease in; without it `source` must have one of its own (`HasOffsetStore`:
    `SqliteJournal.offset_store()`, the journal file's, on the wall clock), else UsageError.
    An exactly-once handler writes through that store's transaction: mypy refuses a
    projection whose transaction type is not the store's.

    Start it with `await nursery.start(serve_projection, ...)`: it returns once the instance
    holds the lease of its slice range, has run the handler's read-model migrations, loaded
    its offsets and started its source (subscribed to the live path), so events appended
    after that reach it by the live path.

    Raises ProjectionLeaseHeld (at start) if another instance runs the projection over an
    overlapping range; ProjectionConflict if another instance changed its offsets or took
    its lease over while it ran (it stops without writing); ProjectionFailed after
    `backoff.max_restarts` consecutive failed restarts. A failing handler, source or store
    restarts the instance with the backoff, logged with the projection, slices and cause.
    """
    slices = slices or SliceRange.all()
    store = offsets if offsets is not None else own_offset_store(source)
    await serve_owned(
        source,
        serializers,
        projection,
        slices,
        store=store,
        owner=new_owner(),
        task_status=task_status,
    )


def new_owner() -> str:
    """A lease owner's name no other instance has: host, process id, a random part."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


async def serve_owned(
    source: Journal | SourceProvider,
    serializers: SerializerRegistry,
    projection: Projection[E, Any],
    slices: SliceRange,
    *,
    store: OffsetStore[Any],
    owner: str,
    task_status: trio.TaskStatus[None],
) -> None:
    """`serve_projection` with its store and its lease's `owner` given: the shared helper
    (`_shared.py`) runs each range of one node under that node's name."""
    provider = source if is_source_provider(source) else LocalJournalSources(source)
    lease = await store.acquire_lease(
        projection.name,
        projection.entity_type,
        slices,
        owner=owner,
        duration=projection.lease_duration,
    )
    keeper = _LeaseKeeper(store, lease, projection.lease_duration)
    try:
        events = provider.source(projection.entity_type, slices, projection.source)
        instance = Instance(events, serializers, store, projection, slices)
        async with open_supervisor() as supervisor:
            # Renewing from the start: read-model migrations may outlast the lease.
            supervisor.start_soon(keeper.keep)
            await supervisor.run(_migrate_then_restart_forever, instance, task_status)
    finally:
        await keeper.release()


def is_source_provider(source: Journal | SourceProvider) -> TypeIs[SourceProvider]:
    # A runtime-checkable protocol matches by attribute name only: a journal that keeps what
    # it wraps in an attribute `source` is still a journal, not a provider.
    return isinstance(source, SourceProvider) and callable(source.source)


def own_offset_store(source: object) -> OffsetStore[Any]:
    if not isinstance(source, HasOffsetStore):
        raise UsageError(
            f"serve_projection: {type(source).__name__} keeps no offsets of its own "
            "(it has no offset_store()): pass the offset store to keep them in, "
            "serve_projection(..., offsets=store)"
        )
    store: OffsetStore[Any] = source.offset_store()
    return store


async def _migrate_then_restart_forever(
    instance: Instance[Any, Any], task_status: trio.TaskStatus[None]
) -> None:
    handler = instance.projection.handler
    if isinstance(handler, ExactlyOnce | GroupedExactlyOnce) and handler.migrations:
        await instance.store.migrate_read_model(instance.name, handler.migrations)
    await _restart_forever(instance, task_status)


async def _restart_forever(
    instance: Instance[Any, Any], task_status: trio.TaskStatus[None]
) -> None:
    projection, consume = instance.projection, _consumer(instance.projection.handler)
    started = False

    def ready() -> None:
        nonlocal started
        if not started:
            started = True
            task_status.started()

    restarts = 0
    while True:
        failed_on: HandlerFailed | None = None
        try:
            await instance.run(ready, consume)
        except ProjectionConflict:
            raise
        except HandlerFailed as exc:
            failed_on, cause = exc, exc.__cause__
        except Exception as exc:
            cause = exc  # the store's or the source's
        if instance.made_progress:
            restarts = 0
        limit = projection.backoff.max_restarts
        if limit is not None and restarts >= limit:
            raise ProjectionFailed(
                projection.name,
                instance.slices,
                restarts + 1,
                persistence_id=failed_on.persistence_id if failed_on else None,
                seq_nr=failed_on.seq_nr if failed_on else None,
            ) from cause
        delay = projection.backoff.delay(restarts)
        log.warning(
            "projection %r (slices %s) failed%s, restarting in %.2fs: %s: %s",
            projection.name,
            instance.slices,
            f" on {failed_on}" if failed_on else "",
            delay,
            type(cause).__name__,
            cause,
        )
        restarts += 1
        await trio.sleep(delay)


def _consumer(
    handler: Handler[E, T],
) -> Callable[[Instance[E, T], trio.MemoryReceiveChannel[SourceMessage]], Awaitable[None]]:
    match handler:
        case ExactlyOnce() | GroupedExactlyOnce():
            return lambda instance, receive: consume_exactly_once(instance, receive, handler)
        case AtLeastOnce():
            return lambda instance, receive: consume_at_least_once(instance, receive, handler)
        case GroupedAtLeastOnce():
            return lambda instance, receive: consume_grouped_at_least_once(
                instance, receive, handler
            )


class _LeaseKeeper:
    """Renews an instance's lease every third of its duration, and gives it up at the end."""

    def __init__(self, store: OffsetStore[object], lease: Lease, duration: float) -> None:
        self.store = store
        self.lease = lease
        self.duration = duration

    async def keep(self) -> None:
        """Renew until cancelled; raises ProjectionConflict once the lease is lost. A failed
        renewal is logged and tried again (the compare-and-set still guards the offsets)."""
        while True:
            await trio.sleep(self.duration / 3)
            try:
                self.lease = await self.store.renew_lease(self.lease, self.duration)
            except ProjectionConflict:
                raise
            except Exception as exc:
                log.warning(
                    "projection %r (slices %s): renewing its lease failed, retrying: %s: %s",
                    self.lease.projection,
                    self.lease.slices,
                    type(exc).__name__,
                    exc,
                )

    async def release(self) -> None:
        """Give the lease up, shielded and bounded in time; a failure is logged (the lease
        then expires by itself)."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _RELEASE_TIMEOUT
            try:
                await self.store.release_lease(self.lease)
            except Exception as exc:
                log.warning(
                    "projection %r (slices %s): giving its lease up failed: %s: %s",
                    self.lease.projection,
                    self.lease.slices,
                    type(exc).__name__,
                    exc,
                )
