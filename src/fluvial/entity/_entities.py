"""`Entities`, the live entities of one process as their users see them: references by type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from fluvial.core.behavior import EventSourcedBehavior
from fluvial.entity._entity_ref import EntityRef
from fluvial.entity._errors import UnknownEntityType
from fluvial.entity._live_entities import LiveEntities

C = TypeVar("C")


class Entities:
    """The live entities of one process. Create it with `open_entities`."""

    def __init__(
        self, live: LiveEntities, behaviors: Sequence[EventSourcedBehavior[Any, Any, Any]]
    ) -> None:
        self._live = live
        self._behaviors = {b.entity_type: b for b in behaviors}

    def ref(self, behavior: EventSourcedBehavior[C, Any, Any], entity_id: str) -> EntityRef[C]:
        """A typed reference to entity `entity_id` of `behavior`'s type."""
        if self._behaviors.get(behavior.entity_type) is not behavior:
            raise UnknownEntityType(
                f"entity type {behavior.entity_type!r} was not given to open_entities "
                f"(known: {sorted(self._behaviors)})"
            )
        return EntityRef(self._live, behavior, entity_id)

    def ref_by_type(self, entity_type: str, entity_id: str) -> EntityRef[Any]:
        """An untyped reference by entity type name (for routers, CLIs and wire adapters)."""
        behavior = self._behaviors.get(entity_type)
        if behavior is None:
            raise UnknownEntityType(
                f"unknown entity type {entity_type!r} (known: {sorted(self._behaviors)})"
            )
        return EntityRef(self._live, behavior, entity_id)

    @property
    def live_count(self) -> int:
        """How many entities are in memory now (started and not yet passivated or stopped)."""
        return len(self._live.live)
