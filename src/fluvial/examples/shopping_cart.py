"""The shopping cart: add and remove items, check out, and a closed cart refuses changes.

Adding and removing both become `ItemUpdated` with a positive or negative quantity, so that the
replicated cart (later) converges whatever order its replicas see the events in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_never

import attrs

from fluvial.core.behavior import (
    Command,
    CommandRejected,
    Effect,
    EventSourcedBehavior,
    SnapshotPolicy,
)
from fluvial.core.errors import UsageError
from fluvial.core.serialization import SerializerRegistry

ENTITY_TYPE = "ShoppingCart"


# -- replies ----------------------------------------------------------------------------------
@attrs.frozen
class Summary:
    items: Mapping[str, int]
    checked_out: bool


class CartClosed(CommandRejected):
    """The cart was checked out and accepts no more changes."""


class EmptyCart(CommandRejected):
    """An empty cart cannot be checked out."""


# -- commands ---------------------------------------------------------------------------------
def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise UsageError(f"{attribute.name} must be positive: {value}")


@attrs.frozen
class AddItem(Command[Summary]):
    item_id: str
    quantity: int = attrs.field(validator=_positive)


@attrs.frozen
class RemoveItem(Command[Summary]):
    item_id: str
    quantity: int = attrs.field(validator=_positive)


@attrs.frozen
class Checkout(Command[Summary]):
    pass


@attrs.frozen
class Get(Command[Summary]):
    pass


CartCommand = AddItem | RemoveItem | Checkout | Get


# -- events -----------------------------------------------------------------------------------
@attrs.frozen
class ItemUpdated:
    item_id: str
    quantity: int  # positive: added, negative: removed


@attrs.frozen
class CheckedOut:
    pass


CartEvent = ItemUpdated | CheckedOut


# -- state ------------------------------------------------------------------------------------
@attrs.frozen
class CartState:
    items: Mapping[str, int] = attrs.field(factory=dict)
    checked_out: bool = False

    def updated(self, item_id: str, quantity: int) -> CartState:
        items = dict(self.items)
        total = items.pop(item_id, 0) + quantity
        if total != 0:
            items[item_id] = total
        return CartState(items, self.checked_out)

    def summary(self) -> Summary:
        return Summary(items=dict(self.items), checked_out=self.checked_out)


# -- behavior ---------------------------------------------------------------------------------
def handle_command(state: CartState, command: CartCommand) -> Effect[CartEvent, CartState]:
    match command:
        case Get():
            return Effect.reply(command, state.summary())
        case _ if state.checked_out:
            return Effect.reject(command, CartClosed(f"cart is checked out: {command!r}"))
        case AddItem(item_id, quantity):
            return Effect.persist(ItemUpdated(item_id, quantity)).then_reply(
                command, CartState.summary
            )
        case RemoveItem(item_id, quantity):
            return Effect.persist(ItemUpdated(item_id, -quantity)).then_reply(
                command, CartState.summary
            )
        case Checkout():
            if not state.items:
                return Effect.reject(command, EmptyCart("cannot check out an empty cart"))
            return Effect.persist(CheckedOut()).then_reply(command, CartState.summary)
        case _:
            assert_never(command)


def apply_event(state: CartState, event: CartEvent) -> CartState:
    match event:
        case ItemUpdated(item_id, quantity):
            return state.updated(item_id, quantity)
        case CheckedOut():
            return attrs.evolve(state, checked_out=True)
        case _:
            assert_never(event)


def cart_tags(event: CartEvent) -> frozenset[str]:
    return frozenset({"checkout"}) if isinstance(event, CheckedOut) else frozenset()


ShoppingCart = EventSourcedBehavior[CartCommand, CartEvent, CartState](
    entity_type=ENTITY_TYPE,
    empty_state=CartState(),
    command_handler=handle_command,
    event_handler=apply_event,
    command_types=(AddItem, RemoveItem, Checkout, Get),
    tagger=cart_tags,
    snapshot_policy=SnapshotPolicy(every=100, when=lambda e: isinstance(e, CheckedOut)),
)


def register_cart(registry: SerializerRegistry) -> SerializerRegistry:
    """Register the cart's events and state under stable manifests; returns `registry`."""
    registry.register(ItemUpdated, "cart.ItemUpdated")
    registry.register(CheckedOut, "cart.CheckedOut")
    registry.register(CartState, "cart.State")
    return registry
