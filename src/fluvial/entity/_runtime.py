"""The entity runtime: one trio task per live entity, fed by a bounded mailbox.

An entity task recovers its state (latest snapshot, then later events), then handles commands.
It takes every command waiting in its mailbox at once, decides them one after the other against
the state the previous ones produced, persists all their events in one append and then replies
to all: one journal round trip per batch, not per command. Each command's state change is
computed as a new value before anything is persisted, so a failing handler leaves no trace.

With a journal that offers `append_soon` (SQLite), the replies are sent by the append's
callback, in the task that learns of the commit, and the entity task only wakes for new mail:
two task switches per command (entity, caller) instead of three. Its mailbox stays held until
then, so the entity never decides a command against events that are not stored yet.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, TypeVar

import outcome
import trio

from fluvial.core.behavior import CommandOf, EventSourcedBehavior
from fluvial.core.command_decisions import decide_commands, foreign_command
from fluvial.core.entity_context import EntityContext
from fluvial.core.errors import UsageError
from fluvial.core.ids import PersistenceId, slice_for
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity._errors import EntityStopped, UnknownEntityType
from fluvial.entity._live_entity import LiveEntity, answer_all, asks_of
from fluvial.entity._mailbox import Ask, Mailbox, MailboxClosed
from fluvial.entity._recovery import recover, save_snapshot, should_snapshot
from fluvial.journal.api import AppendSoon, Journal, SnapshotStore
from fluvial.nursery_errors import open_service_nursery

log = logging.getLogger("fluvial.entity")

R = TypeVar("R")
C = TypeVar("C")


class EntityRef(Generic[C]):
    """A handle to one entity; cheap to create, valid across passivation and restarts."""

    def __init__(
        self, entities: Entities, behavior: EventSourcedBehavior[C, Any, Any], entity_id: str
    ) -> None:
        self._entities = entities
        self.behavior = behavior
        self.persistence_id = PersistenceId(behavior.entity_type, entity_id)

    async def ask(self, command: CommandOf[C, R]) -> R:
        """Send `command` to the entity and wait for its reply.

        Raises the handler's `CommandRejected` error, `CommandTypeError`, `UnhandledCommand`,
        `MissingReply`, `CommandFailed`, `EntityStopped`, or a journal error (the command was
        not persisted). Waits while the entity's mailbox is full.

        Cancellation: until the command is in the entity's mailbox (also while waiting for room
        in it), a `Cancelled` from `ask` means nothing happened. Once it is in the mailbox, the
        command is carried out to completion whatever happens to the caller: a caller cancelled
        while waiting for the reply gets `Cancelled` instead of the reply, and the command's
        events are persisted all the same. (Only closing the runtime drops a command that is
        still waiting in the mailbox: `EntityStopped`.)
        """
        behavior = self.behavior
        if not isinstance(command, behavior.command_types):
            raise foreign_command(behavior.entity_type, behavior.command_types, command)
        # Handing the command over below does not wait, so it would not see a cancellation
        # already pending: look for one first, or a cancelled ask would still be carried out.
        await trio.lowlevel.checkpoint_if_cancelled()
        ask = Ask(command)
        entities = self._entities
        live = entities._live.get(self.persistence_id)
        # The common case, a live entity with room in its mailbox, takes no detour.
        if live is None or entities._closed or not live.mailbox.offer(ask):
            await entities._deliver(self.behavior, self.persistence_id, ask)
        reply: R = await ask.wait()
        return reply


class Entities:
    """The live entities of one process. Create it with `open_entities`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        journal: Journal,
        snapshots: SnapshotStore | None,
        serializers: SerializerRegistry,
        behaviors: Sequence[EventSourcedBehavior[Any, Any, Any]],
        *,
        mailbox_size: int,
        passivate_after: float,
    ) -> None:
        self._nursery = nursery
        self._journal = journal
        self._snapshots = snapshots
        self._serializers = serializers
        self._behaviors = {b.entity_type: b for b in behaviors}
        self._mailbox_size = mailbox_size
        self._passivate_after = passivate_after
        self._live: dict[PersistenceId, LiveEntity] = {}
        self._closed = False
        # A journal that can answer an append with a callback saves the entity task a wake-up
        # per batch: the commit answers the commands, and the entity only wakes for new mail.
        self._append_soon = journal.append_soon if isinstance(journal, AppendSoon) else None

    def ref(self, behavior: EventSourcedBehavior[C, Any, Any], entity_id: str) -> EntityRef[C]:
        """A typed reference to entity `entity_id` of `behavior`'s type."""
        if self._behaviors.get(behavior.entity_type) is not behavior:
            raise UnknownEntityType(
                f"entity type {behavior.entity_type!r} was not given to open_entities "
                f"(known: {sorted(self._behaviors)})"
            )
        return EntityRef(self, behavior, entity_id)

    def ref_by_type(self, entity_type: str, entity_id: str) -> EntityRef[Any]:
        """An untyped reference by entity type name (for routers, CLIs and wire adapters)."""
        behavior = self._behaviors.get(entity_type)
        if behavior is None:
            raise UnknownEntityType(
                f"unknown entity type {entity_type!r} (known: {sorted(self._behaviors)})"
            )
        return EntityRef(self, behavior, entity_id)

    @property
    def live_count(self) -> int:
        """How many entities are in memory now (started and not yet passivated or stopped)."""
        return len(self._live)

    async def _deliver(
        self, behavior: EventSourcedBehavior[Any, Any, Any], pid: PersistenceId, ask: Ask
    ) -> None:
        while True:
            if self._closed:
                raise EntityStopped(f"{pid}: the entity runtime is closed")
            live = self._live.get(pid) or self._spawn(behavior, pid)
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
    def _spawn(
        self, behavior: EventSourcedBehavior[Any, Any, Any], pid: PersistenceId
    ) -> LiveEntity:
        key = str(pid)
        live = LiveEntity(
            behavior,
            pid,
            key,
            slice_for(key),
            Mailbox(self._mailbox_size),
            trio.current_time(),
            behavior.handlers_for(EntityContext(pid)),
        )
        live.on_appended = functools.partial(self._appended, live)
        self._live[pid] = live
        self._nursery.start_soon(self._run_entity, live, name=key)
        return live

    def _forget(self, live: LiveEntity) -> None:
        if self._live.get(live.pid) is live:
            del self._live[live.pid]

    def _retire(self, live: LiveEntity, leftovers: Sequence[Ask] = ()) -> None:
        """Take `live` out of service; its unhandled commands go to a new incarnation, or,
        once the runtime closes, fail with `EntityStopped`."""
        self._forget(live)
        waiting = [*leftovers, *live.mailbox.close()]
        if not waiting:
            return
        if self._closed:
            stopped = EntityStopped(f"{live.pid}: the entity runtime closed")
            for ask in waiting:
                ask.fail(stopped)
            return
        successor = self._spawn(live.behavior, live.pid)
        for ask in waiting:
            successor.mailbox.put_nowait(ask)

    @trio.lowlevel.enable_ki_protection  # see `_open_entities`
    async def _passivate_idle(self, task_status: trio.TaskStatus[None]) -> None:
        """Retire entities idle for `passivate_after`; checks at a quarter of that period."""
        task_status.started()
        while True:
            await trio.sleep(self._passivate_after / 4)
            horizon = trio.current_time() - self._passivate_after
            for live in list(self._live.values()):
                if live.mailbox.idle and live.last_active <= horizon:
                    self._retire(live)

    @trio.lowlevel.enable_ki_protection  # see `_open_entities`
    async def _run_entity(self, live: LiveEntity) -> None:
        try:
            await self._serve_entity(live)
        except Exception as exc:
            # The journal failed while reloading after a failed append: this incarnation ends
            # and its commands share the error; the next command starts a new one.
            log.error("%s: stopped after a journal failure: %s", live.key, exc)
            self._forget(live)
            for ask in [*live.batch, *live.mailbox.close()]:
                ask.fail(exc)
        except BaseException:
            # Cancelled because the runtime closes: nobody else will answer these.
            stopped = EntityStopped(f"{live.pid}: the entity runtime closed")
            for ask in [*live.batch, *live.mailbox.close()]:
                ask.fail(stopped)
            raise

    async def _serve_entity(self, live: LiveEntity) -> None:
        try:
            live.state, live.seq_nr = await self._recover(live)
        except Exception as exc:
            # Waiting commands share the error (a corrupt row, say); the next command
            # tries recovery again, and nothing stored is touched.
            log.error("%s: recovery failed: %s", live.key, exc)
            self._forget(live)
            for ask in live.mailbox.close():
                ask.fail(exc)
            return
        mailbox = live.mailbox
        encode = self._serializers.encode
        entity_type = live.behavior.entity_type
        while True:
            live.batch = batch = await mailbox.take_all()
            if not batch:
                return  # retired: the mailbox was closed
            live.last_active = trio.current_time()
            if live.reload:
                # The last append failed (a conflict means another writer): reload first.
                live.state, live.seq_nr = await self._recover(live)
                live.reload = False
            decision = decide_commands(
                live.handlers,
                live.key,
                entity_type,
                live.slice,
                live.state,
                live.seq_nr,
                batch,
                encode,
            )
            records = decision.records
            if not records:
                answer_all(decision)
                if decision.stopped:
                    self._retire(live, batch[len(decision.decided) :])
                    return
                await trio.lowlevel.checkpoint()  # a stream of read-only commands must yield
                continue
            # The entity decides nothing more until the append is answered (`_appended`
            # releases the mailbox), so it never decides against unstored events.
            mailbox.hold()
            live.in_flight = decision
            appended = live.on_appended
            assert appended is not None
            if self._append_soon is not None:
                live.batch = ()  # the journal's callback answers these asks now
                try:
                    self._append_soon(records, appended)
                except Exception as exc:
                    appended(outcome.Error(exc))
                if not mailbox.held:
                    await trio.lowlevel.checkpoint()  # answered at once: yield all the same
                continue
            try:
                stored = await self._journal.append(records)
            except Exception as exc:
                appended(outcome.Error(exc))
            else:
                appended(outcome.Value(stored))
            live.batch = ()

    async def _recover(self, live: LiveEntity) -> tuple[Any, int]:
        return await recover(
            self._journal,
            self._snapshots,
            self._serializers,
            live.behavior.empty_state,
            live.handlers.event_handler,
            live.key,
        )

    def _appended(self, live: LiveEntity, result: outcome.Outcome[Sequence[EventRecord]]) -> None:
        """The journal's answer to the append of `live.in_flight`: reply to its commands, then
        let the entity take its mail again. Runs in the journal's task, so it must not raise."""
        assert live.in_flight is not None
        decision, live.in_flight = live.in_flight, None
        leftovers = asks_of(decision)[len(decision.decided) :] if decision.stopped else None
        if isinstance(result, outcome.Error):
            # Nothing of the batch is stored; the state stays as it was. The decision says
            # which commands saw the unstored events and so share the error.
            answer_all(decision, result.error)
            live.reload = True
        else:
            stored = result.unwrap()
            first_seq_nr = live.seq_nr + 1
            live.seq_nr += len(stored)
            live.state = decision.state
            answer_all(decision)
            if (
                self._snapshots is not None
                and live.behavior.snapshot_policy.enabled
                and not self._closed
                and should_snapshot(live.behavior, live.key, first_seq_nr, decision.events)
            ):
                # The mailbox stays held: the next command waits until the snapshot is saved
                # (snapshots never pile up, and a reader after the reply can find it).
                self._nursery.start_soon(self._save_snapshot_then_resume, live, leftovers)
                return
        self._resume(live, leftovers)

    def _resume(self, live: LiveEntity, leftovers: list[Ask] | None) -> None:
        """After a batch: take the next mail, or retire if the batch stopped the entity."""
        if leftovers is not None:
            self._retire(live, leftovers)
        else:
            live.mailbox.release()

    @trio.lowlevel.enable_ki_protection  # see `_open_entities`
    async def _save_snapshot_then_resume(
        self, live: LiveEntity, leftovers: list[Ask] | None
    ) -> None:
        assert self._snapshots is not None
        try:
            await save_snapshot(
                self._snapshots,
                self._serializers,
                live.behavior,
                live.key,
                live.slice,
                live.state,
                live.seq_nr,
            )
        finally:
            self._resume(live, leftovers)

    def _close(self) -> None:
        self._closed = True


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
        entities = Entities(
            nursery,
            journal,
            snapshots,
            serializers,
            behaviors,
            mailbox_size=mailbox_size,
            passivate_after=passivate_after,
        )
        await nursery.start(entities._passivate_idle)
        try:
            yield entities
        finally:
            entities._close()
            nursery.cancel_scope.cancel()
