"""The shopping cart: add and remove items, check out, and a closed cart refuses changes.

Adding and removing both become `ItemUpdated` with a positive or negative quantity, so that the
replicated cart (later) converges whatever order its replicas see the events in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_never

import attrs

from fluvial import (
    Command,
    CommandRejected,
    Effect,
    EventSourcedBehavior,
    SerializerRegistry,
    SnapshotPolicy,
    UsageError,
)

ENTITY_TYPE = "ShoppingCart"


@attrs.frozen
class Summary:
    """The reply to every cart command: the items and whether the cart is checked out."""

    items: Mapping[str, int]
    checked_out: bool


class CartClosed(CommandRejected):
    """The cart was checked out and accepts no more changes."""


class EmptyCart(CommandRejected):
    """An empty cart cannot be checked out."""


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise UsageError(f"{attribute.name} must be positive: {value}")


@attrs.frozen
class AddItem(Command[Summary]):
    """Add `quantity` (positive) of an item."""

    item_id: str
    quantity: int = attrs.field(validator=_positive)


@attrs.frozen
class RemoveItem(Command[Summary]):
    """Remove `quantity` (positive) of an item; the cart drops an item that reaches zero."""

    item_id: str
    quantity: int = attrs.field(validator=_positive)


@attrs.frozen
class Checkout(Command[Summary]):
    """Close the cart; refused with `EmptyCart` when it has no items."""


@attrs.frozen
class Get(Command[Summary]):
    """Read the cart; answered even once it is checked out."""


CartCommand = AddItem | RemoveItem | Checkout | Get


@attrs.frozen
class ItemUpdated:
    """An item's quantity changed by `quantity`."""

    item_id: str
    quantity: int  # positive: added, negative: removed


@attrs.frozen
class CheckedOut:
    """The cart was checked out."""


CartEvent = ItemUpdated | CheckedOut


@attrs.frozen
class CartState:
    """The items in the cart (none with a zero quantity) and whether it is checked out."""

    items: Mapping[str, int] = attrs.field(factory=dict)
    checked_out: bool = False

    def updated(self, item_id: str, quantity: int) -> CartState:
        """The state after `quantity` (signed) more of `item_id`."""
        items = dict(self.items)
        total = items.pop(item_id, 0) + quantity
        if total != 0:
            items[item_id] = total
        return CartState(items, self.checked_out)

    def summary(self) -> Summary:
        """This state as the reply to a command."""
        return Summary(items=dict(self.items), checked_out=self.checked_out)


# The effects of this behavior: `CartEffect.persist` takes only cart events, and `then_reply`
# functions see a `CartState`. The same alias annotates the command handler.
CartEffect = Effect[CartEvent, CartState]


def handle_command(state: CartState, command: CartCommand) -> CartEffect:
    """Decide what a command does to the cart; a checked-out cart answers only `Get`."""
    match command:
        case Get():
            return CartEffect.reply(command, state.summary())
        case _ if state.checked_out:
            return CartEffect.reject(command, CartClosed(f"cart is checked out: {command!r}"))
        case AddItem(item_id, quantity):
            return CartEffect.persist(ItemUpdated(item_id, quantity)).then_reply(
                command, CartState.summary
            )
        case RemoveItem(item_id, quantity):
            return CartEffect.persist(ItemUpdated(item_id, -quantity)).then_reply(
                command, CartState.summary
            )
        case Checkout():
            if not state.items:
                return CartEffect.reject(command, EmptyCart("cannot check out an empty cart"))
            return CartEffect.persist(CheckedOut()).then_reply(command, CartState.summary)
        case _:
            assert_never(command)


def apply_event(state: CartState, event: CartEvent) -> CartState:
    """Fold one event into the cart's state."""
    match event:
        case ItemUpdated(item_id, quantity):
            return state.updated(item_id, quantity)
        case CheckedOut():
            return attrs.evolve(state, checked_out=True)
        case _:
            assert_never(event)


def cart_tags(event: CartEvent) -> frozenset[str]:
    """Tag checkouts, so that a projection or filter can pick them out."""
    return frozenset({"checkout"}) if isinstance(event, CheckedOut) else frozenset()


ShoppingCart = EventSourcedBehavior[CartCommand, CartEvent, CartState](
    entity_type=ENTITY_TYPE,
    empty_state=CartState(),
    command_handler=handle_command,
    event_handler=apply_event,
    tagger=cart_tags,
    snapshot_policy=SnapshotPolicy(every=100, when=lambda e: isinstance(e, CheckedOut)),
)


def register_cart(registry: SerializerRegistry) -> SerializerRegistry:
    """Register the cart's events and state under stable manifests; returns `registry`."""
    registry.register(ItemUpdated, "cart.ItemUpdated")
    registry.register(CheckedOut, "cart.CheckedOut")
    registry.register(CartState, "cart.State")
    return registry
