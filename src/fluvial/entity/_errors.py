"""Errors an `ask` raises besides the handler's own `CommandRejected` replies.

The errors of a command's outcome are decided in the core and defined there
(`fluvial.core.command_errors`); this module adds the runtime's own and re-exports them all.
"""

from __future__ import annotations

from fluvial.core.command_errors import CommandFailed as CommandFailed
from fluvial.core.command_errors import CommandTypeError as CommandTypeError
from fluvial.core.command_errors import EntityError as EntityError
from fluvial.core.command_errors import MissingReply as MissingReply
from fluvial.core.command_errors import UnhandledCommand as UnhandledCommand
from fluvial.core.errors import UsageError


class UnknownEntityType(UsageError):
    """A reference to an entity type that was not given to `open_entities`."""


class EntityStopped(EntityError):
    """The entity runtime was closed before the command could be handled."""
