"""Mistakes mypy must reject in a command handler's effects: each `type: ignore` line is one.

Never run, only type-checked (`just lint`); see entity_ref_mistakes.py for how a reopened hole
fails the build.
"""

from __future__ import annotations

from typing import assert_type

import attrs

from fluvial import Effect, EventSourcedBehavior
from fluvial.examples.shopping_cart import (
    AddItem,
    CartCommand,
    CartEffect,
    CartEvent,
    CartState,
    Get,
    ItemUpdated,
    apply_event,
)


@attrs.frozen
class Deposited:
    """An event of another entity."""

    amount: int


def reply_mistakes(state: CartState, get: Get) -> None:
    CartEffect.reply(get, state.summary())
    CartEffect.reply(get, "not a Summary")  # type: ignore[misc]  # "cannot infer ReplyT"
    Effect.reply(get, 42)  # type: ignore[misc]


def then_reply_mistakes(add: AddItem) -> None:
    def wrong_reply(cart: CartState) -> int:
        return len(cart.items)

    effect = CartEffect.persist(ItemUpdated("apple", 1))
    effect.then_reply(add, wrong_reply)  # type: ignore[arg-type]
    effect.then_reply(add, lambda cart: assert_type(cart, CartState).summary())
    effect.then_reply(add, lambda cart: cart.no_such_field)  # type: ignore[attr-defined]


def persist_mistakes() -> None:
    assert_type(CartEffect.persist(ItemUpdated("apple", 1)), Effect[CartEvent, CartState])
    CartEffect.persist(Deposited(1))  # type: ignore[arg-type]
    CartEffect.persist_all([Deposited(1)])  # type: ignore[list-item]
    # The bare class infers the event type; its state is unknown: `object`, not `Any`.
    assert_type(Effect.persist(Deposited(1)), Effect[Deposited, object])


def handler_returning_another_entitys_events(state: CartState, add: AddItem) -> CartEffect:
    return Effect.persist(Deposited(add.quantity))  # type: ignore[arg-type]


def bare_effect_mistakes(add: AddItem) -> None:
    # On the bare class, `then_reply` functions see `object`: use the alias (`CartEffect`).
    Effect.persist(ItemUpdated("apple", 1)).then_reply(add, CartState.summary)  # type: ignore[arg-type]
    Effect.none().then_reply(add, lambda cart: cart.summary())  # type: ignore[attr-defined]


def bare_then_reply_in_a_typed_handler(state: CartState, add: AddItem) -> CartEffect:
    return Effect.persist(ItemUpdated("apple", 1)).then_reply(  # type: ignore[return-value]
        add,
        lambda cart: cart.no_such_field,  # type: ignore[attr-defined]
    )


def bare_annotated_handler(state: CartState, command: CartCommand) -> Effect:
    return Effect.none()


def a_behavior_with_a_bare_annotated_handler() -> None:
    EventSourcedBehavior[CartCommand, CartEvent, CartState](
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=bare_annotated_handler,  # type: ignore[arg-type]
        event_handler=apply_event,
    )
