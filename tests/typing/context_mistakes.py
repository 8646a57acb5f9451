"""Mistakes mypy must reject with handlers that take an `EntityContext`: each `type: ignore`
line is one. Never run, only type-checked (`just lint`)."""

from __future__ import annotations

from fluvial import EntityContext, EventSourcedBehavior
from fluvial.examples.shopping_cart import (
    CartCommand,
    CartEffect,
    CartEvent,
    CartState,
    Get,
    apply_event,
    handle_command,
)

CartBehavior = EventSourcedBehavior[CartCommand, CartEvent, CartState]


def handle(context: EntityContext, state: CartState, command: CartCommand) -> CartEffect:
    return handle_command(state, command)


def apply(context: EntityContext, state: CartState, event: CartEvent) -> CartState:
    return apply_event(state, event)


def a_plain_handler_given_to_with_context() -> None:
    CartBehavior.with_context(
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=handle_command,  # type: ignore[arg-type]
        event_handler=apply,
    )
    CartBehavior.with_context(
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=handle,
        event_handler=apply_event,  # type: ignore[arg-type]
    )


def a_contextual_handler_given_to_the_constructor() -> None:
    CartBehavior(
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=handle,  # type: ignore[arg-type]
        event_handler=apply_event,
    )


def a_tagger_without_the_context() -> None:
    CartBehavior.with_context(
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=handle,
        event_handler=apply,
        tagger=lambda event: frozenset(),  # type: ignore[arg-type,misc]
    )


def the_context_is_read_only_and_typed(context: EntityContext) -> int:
    context.entity_id = "other"  # type: ignore[misc]
    return context.entity_id  # type: ignore[return-value]


def bound_handlers_keep_the_behaviors_types(context: EntityContext) -> int:
    behavior = CartBehavior.with_context(
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=handle,
        event_handler=apply,
    )
    handlers = behavior.handlers_for(context)
    handlers.command_handler(CartState(), "Get()")  # type: ignore[arg-type]
    handlers.event_handler(CartState(), apply)  # type: ignore[arg-type]
    handlers.command_handler(CartState(), Get())
    return handlers.event_handler(CartState(), apply_event)  # type: ignore[return-value,arg-type]
