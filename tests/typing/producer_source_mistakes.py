"""Mistakes mypy must reject when a producer publishes an entity's events: each `type: ignore`
line is one.

`EventProducerSource.of(behavior, ...)` takes the event type from the behavior, so the
transformation and the filter are checked against the entity's events, and the source is
typed by the public event the transformation returns. Never run, only type-checked (`just
lint`); see entity_ref_mistakes.py for how a reopened hole fails the build.
"""

from __future__ import annotations

from typing import assert_type

import attrs

from fluvial import EventEnvelope, SerializerRegistry
from fluvial.examples.shopping_cart import CartEvent, CheckedOut, ItemUpdated, ShoppingCart
from fluvial.grpc import EventProducerSource


@attrs.frozen
class PublicCheckout:
    cart: str


def public_checkout(envelope: EventEnvelope[CartEvent]) -> PublicCheckout | None:
    """Only checkouts are published; item changes travel as placeholders."""
    if isinstance(envelope.event, CheckedOut):
        return PublicCheckout(envelope.entity_id)
    return None


def of_other_events(envelope: EventEnvelope[int]) -> PublicCheckout | None:
    return None


def item_changes_only(envelope: EventEnvelope[ItemUpdated]) -> bool:
    return True


PUBLIC = SerializerRegistry()

checkouts = EventProducerSource.of(
    ShoppingCart, stream_id="checkouts", serializers=PUBLIC, transformation=public_checkout
)
assert_type(checkouts, EventProducerSource[CartEvent, PublicCheckout])

EventProducerSource.of(
    ShoppingCart,
    stream_id="carts",
    serializers=PUBLIC,
    transformation=of_other_events,  # type: ignore[arg-type]
)
EventProducerSource.of(
    ShoppingCart,
    stream_id="carts",
    serializers=PUBLIC,
    transformation=public_checkout,
    filter=item_changes_only,  # type: ignore[arg-type]
)
