"""`EntityRef.ask`: a command on its way to an entity, and the wait for its reply."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from fluvial.core.behavior import CommandOf, EventSourcedBehavior
from fluvial.core.command_decisions import foreign_command
from fluvial.core.ids import PersistenceId
from fluvial.entity._mailbox import Ask

if TYPE_CHECKING:
    from fluvial.entity._live_entities import LiveEntities

R = TypeVar("R")
C = TypeVar("C")


class EntityRef(Generic[C]):
    """A handle to one entity; cheap to create, valid across passivation and restarts."""

    def __init__(
        self, entities: LiveEntities, behavior: EventSourcedBehavior[C, Any, Any], entity_id: str
    ) -> None:
        self._entities = entities
        self.behavior = behavior
        self.persistence_id = PersistenceId(behavior.entity_type, entity_id)
        self._key = str(self.persistence_id)  # what `LiveEntities.live` is keyed by

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
        live = entities.live.get(self._key)
        # The common case, a live entity with room in its mailbox, takes no detour.
        if live is None or entities.closed or not live.mailbox.offer(ask):
            await entities.deliver(self.behavior, self.persistence_id, ask)
        reply: R = await ask.reply()
        return reply
