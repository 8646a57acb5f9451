"""Which entities are in memory: starting one for its first command, handing commands over,
retiring one that stopped or idled (`passivate_after`), and closing them all.

Each live entity runs its own task (`fluvial.entity._entity_task`); the journal's answers to
its appends are handled by `fluvial.entity._batch_answers`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import trio

from fluvial.core.behavior import EventSourcedBehavior
from fluvial.core.entity_context import EntityContext
from fluvial.core.ids import PersistenceId, slice_for
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity._batch_answers import BatchAnswers
from fluvial.entity._entity_task import EntityTasks
from fluvial.entity._errors import EntityStopped
from fluvial.entity._live_entity import LiveEntity
from fluvial.entity._mailbox import Ask, Mailbox, MailboxClosed
from fluvial.journal.api import Journal, SnapshotStore


class LiveEntities:
    """The entities in memory, by persistence id, and what starts and retires them."""

    def __init__(
        self,
        nursery: trio.Nursery,
        journal: Journal,
        snapshots: SnapshotStore | None,
        serializers: SerializerRegistry,
        *,
        mailbox_size: int,
        passivate_after: float,
    ) -> None:
        # By the persistence id's string form (`LiveEntity.key`): a str caches its hash, a
        # PersistenceId computes it in Python, once per command.
        self.live: dict[str, LiveEntity] = {}
        self.closed = False
        self._nursery = nursery
        self._mailbox_size = mailbox_size
        self._passivate_after = passivate_after
        self._tasks = EntityTasks(self, journal, snapshots, serializers)
        self._answers = BatchAnswers(self, nursery, snapshots, serializers)

    async def deliver(
        self, behavior: EventSourcedBehavior[Any, Any, Any], pid: PersistenceId, ask: Ask
    ) -> None:
        """Put `ask` in the mailbox of entity `pid`, starting it if it is not live, waiting
        while its mailbox is full. Raises EntityStopped once closed."""
        while True:
            if self.closed:
                raise EntityStopped(f"{pid}: the entity runtime is closed")
            live = self.live.get(str(pid)) or self.spawn(behavior, pid)
            try:
                await live.mailbox.put(ask)
                return
            except MailboxClosed:
                continue  # it stopped while we waited for room: start it again

    # Called from the caller's task: a Ctrl-C landing inside trio's start_soon (between adding
    # the task to the nursery and scheduling it) would leave a task that never runs, and
    # `open_entities` would wait for it forever. Protected, the Ctrl-C comes at the caller's
    # next checkpoint instead.
    @trio.lowlevel.enable_ki_protection
    def spawn(
        self, behavior: EventSourcedBehavior[Any, Any, Any], pid: PersistenceId
    ) -> LiveEntity:
        """Start a new incarnation of entity `pid`: its task recovers it, then takes its mail."""
        key = str(pid)
        live = LiveEntity(
            behavior,
            pid,
            key,
            slice_for(key),
            Mailbox(self._mailbox_size),
            behavior.handlers_for(EntityContext(pid)),
        )
        live.on_appended = functools.partial(self._answers.appended, live)
        self.live[key] = live
        self._nursery.start_soon(self._tasks.run, live, name=key)
        return live

    def forget(self, live: LiveEntity) -> None:
        """`live` is no longer in memory (its task ends)."""
        if self.live.get(live.key) is live:
            del self.live[live.key]

    def retire(self, live: LiveEntity, leftovers: Sequence[Ask] = ()) -> None:
        """Take `live` out of service; its unhandled commands go to a new incarnation, or,
        once the runtime closes, fail with `EntityStopped`."""
        self.forget(live)
        waiting = [*leftovers, *live.mailbox.close()]
        if not waiting:
            return
        if self.closed:
            stopped = EntityStopped(f"{live.pid}: the entity runtime closed")
            for ask in waiting:
                ask.fail(stopped)
            return
        successor = self.spawn(live.behavior, live.pid)
        for ask in waiting:
            successor.mailbox.put_nowait(ask)

    @trio.lowlevel.enable_ki_protection  # see `fluvial.entity._opening`
    async def passivate_idle(self, task_status: trio.TaskStatus[None]) -> None:
        """Retire entities idle for `passivate_after`; checks at a quarter of that period.

        An entity is retired by the fourth sweep in a row that finds it idle (waiting for mail,
        none taken since the sweep before): the first of them comes after its last work, and
        the sweeps are at least a quarter period apart, so it has idled a whole period by then.
        Counting sweeps spares the entity task a clock reading per batch.
        """
        task_status.started()
        while True:
            await trio.sleep(self._passivate_after / 4)
            for live in list(self.live.values()):
                if live.active or not live.mailbox.idle:
                    live.active, live.idle_sweeps = False, 0
                    continue
                live.idle_sweeps += 1
                if live.idle_sweeps >= 4:
                    self.retire(live)

    def close(self) -> None:
        """Accept no more commands: the tasks are cancelled next, and what waits fails."""
        self.closed = True
