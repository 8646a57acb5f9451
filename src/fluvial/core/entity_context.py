"""What a behavior's handlers may know about the entity they run for.

A behavior built with `EventSourcedBehavior.with_context` has handlers that take an
`EntityContext` first: `(context, state, command)`, `(context, state, event)`,
`(context, event)`. The runtime and the test kit both build it from the entity's persistence
id, once per incarnation, so a handler sees the same context in a unit test as in production.

Replicated event sourcing (later) extends it, without changing these signatures, with what a
replicated handler needs: its replica id, all replicas, and per event its origin, whether it
is concurrent with the local state, and whether recovery is running. The handlers receive the
context as an argument (today bound once per incarnation with `functools.partial`, since it
does not change): per-event facts will come through the same parameter, by binding a context
per event or by a context whose per-event fields the runtime sets, without changing what a
behavior's handlers look like.
"""

from __future__ import annotations

import attrs

from fluvial.core.ids import PersistenceId


@attrs.frozen
class EntityContext:
    """The entity a handler runs for: its persistence id, entity type and entity id."""

    persistence_id: PersistenceId

    @property
    def entity_type(self) -> str:
        """The entity type (the behavior's `entity_type`)."""
        return self.persistence_id.entity_type

    @property
    def entity_id(self) -> str:
        """The entity's id, as given to `Entities.ref` (or the test kit's `entity_id`)."""
        return self.persistence_id.entity_id
