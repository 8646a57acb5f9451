"""What a producer offers under one stream id: which events, in which public form.

A service's events are its own; what it publishes to other services is a contract. An
`EventProducerSource` names the public stream (`stream_id`), the entity type whose events
feed it, the transformation from each internal event to its public form, a filter that keeps
events out of the stream, and the serializer registry of the public event classes. Events
that the filter or the transformation drops still travel, as placeholders (seq nr, no
payload), so the consumer's seq nrs stay gapless and its offsets keep moving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

from fluvial.core.behavior import EventSourcedBehavior
from fluvial.core.errors import UsageError
from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventEnvelope
from fluvial.core.serialization import SerializerRegistry

E = TypeVar("E")  # the entity's (internal) event type
P = TypeVar("P")  # the public event type


def _every_event(envelope: EventEnvelope[Any]) -> bool:
    return True


def _check_stream_id(source: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise UsageError(f"a stream id must be a non-empty str: {value!r}")


def _check_entity_type(source: object, attribute: attrs.Attribute[str], value: str) -> None:
    PersistenceId(value, "x")  # raises InvalidPersistenceId naming what is wrong


@attrs.frozen(kw_only=True)
class EventProducerSource(Generic[E, P]):
    """The public stream `stream_id` of the events of `entity_type`.

    - `transformation` turns each internal event (in its envelope) into the public event
      that consumers receive, encoded with `serializers`; returning None sends a placeholder
      instead. None (the default) sends each event as it is stored, without decoding it (the
      public event classes are then the internal ones).
    - `filter` is the producer's own filter, applied before the consumer's (a consumer cannot
      override it): an envelope it answers False for is sent as a placeholder.
    - `serializers` encodes the public events (the internal ones are decoded with the
      journal's registry, which the producer is given).

    Build it with `EventProducerSource.of(behavior, ...)` to have mypy check `transformation`
    and `filter` against the entity's event type. The transformation and the filter run once
    per event on the producer's trio thread; an exception from either ends the stream and
    comes out as itself.
    """

    stream_id: str = attrs.field(validator=_check_stream_id)
    entity_type: str = attrs.field(validator=_check_entity_type)
    serializers: SerializerRegistry
    transformation: Callable[[EventEnvelope[E]], P | None] | None = None
    filter: Callable[[EventEnvelope[E]], bool] = _every_event

    @classmethod
    def of(
        cls,
        behavior: EventSourcedBehavior[Any, E, Any],
        *,
        stream_id: str,
        serializers: SerializerRegistry,
        transformation: Callable[[EventEnvelope[E]], P | None] | None = None,
        filter: Callable[[EventEnvelope[E]], bool] = _every_event,
    ) -> EventProducerSource[E, P]:
        """The public stream `stream_id` of `behavior`'s events (its entity type), typed by
        its event type `E`."""
        return cls(
            stream_id=stream_id,
            entity_type=behavior.entity_type,
            serializers=serializers,
            transformation=transformation,
            filter=filter,
        )

    @property
    def decodes(self) -> bool:
        """Whether events are decoded on their way out (a transformation or a filter needs
        the event; without either, stored payloads travel as they are)."""
        return self.transformation is not None or self.filter is not _every_event
