"""`open_entities`: the entity runtime's context, which checks its settings and owns the
entities' tasks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from fluvial.core.behavior import EventSourcedBehavior
from fluvial.core.errors import UsageError
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity._entities import Entities
from fluvial.entity._live_entities import LiveEntities
from fluvial.journal.api import Journal, SnapshotStore
from fluvial.nursery_errors import open_service_nursery


def open_entities(
    journal: Journal,
    serializers: SerializerRegistry,
    behaviors: Sequence[EventSourcedBehavior[Any, Any, Any]],
    *,
    snapshots: SnapshotStore | None = None,
    mailbox_size: int = 64,
    passivate_after: float = 120.0,
) -> contextlib.AbstractAsyncContextManager[Entities]:
    """Run entities of the given behaviors on `journal` while the context is open.

    `snapshots` defaults to no snapshots. `mailbox_size` bounds each entity's waiting commands
    (callers wait when it is full); an entity idle for `passivate_after` seconds leaves memory.
    On exit every entity task is cancelled; commands still waiting raise `EntityStopped`.

    Raises `UsageError` at once, at this call, for a `mailbox_size` that is not an int >= 1, a
    `passivate_after` that is not a positive number, or two behaviors of one entity type. An
    exception that ends the block comes out as itself (not in an `ExceptionGroup`).
    """
    if isinstance(mailbox_size, bool) or not isinstance(mailbox_size, int) or mailbox_size < 1:
        raise UsageError(f"mailbox_size must be an int >= 1: {mailbox_size!r}")
    if (
        isinstance(passivate_after, bool)
        or not isinstance(passivate_after, int | float)
        or not passivate_after > 0  # NaN too
    ):
        raise UsageError(
            f"passivate_after must be a positive number of seconds: {passivate_after!r}"
        )
    _check_behaviors(behaviors)
    return _open_entities(journal, serializers, behaviors, snapshots, mailbox_size, passivate_after)


def _check_behaviors(behaviors: Sequence[EventSourcedBehavior[Any, Any, Any]]) -> None:
    seen: set[str] = set()
    for behavior in behaviors:
        if not isinstance(behavior, EventSourcedBehavior):
            raise UsageError(f"not an EventSourcedBehavior: {behavior!r}")
        if behavior.entity_type in seen:
            raise UsageError(
                f"two behaviors for entity type {behavior.entity_type!r}: give each entity "
                "type once"
            )
        seen.add(behavior.entity_type)


@contextlib.asynccontextmanager
@trio.lowlevel.enable_ki_protection
async def _open_entities(
    journal: Journal,
    serializers: SerializerRegistry,
    behaviors: Sequence[EventSourcedBehavior[Any, Any, Any]],
    snapshots: SnapshotStore | None,
    mailbox_size: int,
    passivate_after: float,
) -> AsyncIterator[Entities]:
    # Ctrl-C is delivered to the user's code, never inside the runtime's own tasks or its
    # closing: there it would fail the commands of an entity midway and show up beside the
    # user's own tasks' errors, as a second exception in a group. (KI protection costs
    # nothing per call: trio looks it up by code object when the signal comes.)
    async with open_service_nursery() as nursery:
        live = LiveEntities(
            nursery,
            journal,
            snapshots,
            serializers,
            mailbox_size=mailbox_size,
            passivate_after=passivate_after,
        )
        await nursery.start(live.passivate_idle)
        try:
            yield Entities(live, behaviors)
        finally:
            live.close()
            nursery.cancel_scope.cancel()
