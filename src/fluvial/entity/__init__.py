"""The entity runtime: one trio task per live entity, fed by a bounded mailbox (docs/entities.md).
The modules here are private; these are the public names."""

from fluvial.entity._entities import Entities as Entities
from fluvial.entity._entity_ref import EntityRef as EntityRef
from fluvial.entity._errors import CommandFailed as CommandFailed
from fluvial.entity._errors import CommandTypeError as CommandTypeError
from fluvial.entity._errors import EntityError as EntityError
from fluvial.entity._errors import EntityStopped as EntityStopped
from fluvial.entity._errors import MissingReply as MissingReply
from fluvial.entity._errors import UnhandledCommand as UnhandledCommand
from fluvial.entity._errors import UnknownEntityType as UnknownEntityType
from fluvial.entity._opening import open_entities as open_entities

__all__ = [
    "CommandFailed",
    "CommandTypeError",
    "Entities",
    "EntityError",
    "EntityRef",
    "EntityStopped",
    "MissingReply",
    "UnhandledCommand",
    "UnknownEntityType",
    "open_entities",
]
