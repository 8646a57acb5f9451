"""What a command's outcome can be besides its reply: the errors an `ask` raises for it.

They live in the core because the core decides them (`fluvial.core.command_decisions`), for
the runtime and the test kit alike, with one set of messages. `fluvial.entity._errors` re-exports
them beside the runtime's own errors.
"""

from __future__ import annotations

from fluvial.core.errors import FluvialError, UsageError


class EntityError(FluvialError):
    """A command could not be carried out by its entity."""


class CommandTypeError(UsageError):
    """A command that the entity's behavior does not accept (meant for another entity?)."""


class CommandFailed(EntityError):
    """A handler raised while handling the command. Nothing of the command was persisted
    or applied, unless the failure was in the reply function, which runs after persisting:
    `persisted` says which. The handler's exception is the `__cause__`."""

    def __init__(self, persistence_id: str, command: object, *, persisted: bool) -> None:
        where = "building the reply after persisting" if persisted else "handling it"
        super().__init__(f"{persistence_id}: {type(command).__name__} failed while {where}")
        self.persistence_id = persistence_id
        self.command = command
        self.persisted = persisted


class UnhandledCommand(EntityError):
    """The command handler returned `Effect.unhandled()` for this command in this state."""


class MissingReply(EntityError):
    """The command handler's effect carried out the command but did not reply to it."""
